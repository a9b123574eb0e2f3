from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Budgets"

    def ready(self) -> None:
        """Plug budgets into the two layers below that must not import it: ingestion asks for
        the after-ingest check (metering.hooks), the close asks for each period's cap
        (invoicing.hooks)."""
        from budgets import selectors, services
        from invoicing import hooks as invoicing_hooks
        from metering import hooks as metering_hooks

        metering_hooks.register_after_ingest(services.check_budgets_after_ingest)
        invoicing_hooks.register_period_caps(selectors.caps_for_periods)
