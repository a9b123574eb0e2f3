from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from invoicing import hooks as invoicing_hooks
        from notifications import (
            receivers,  # noqa: F401 - connects the receiver
            services,
        )

        invoicing_hooks.register_invoice_finalized(services.queue_invoice_email)
