from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from metering import hooks
        from notifications import receivers, services  # noqa: F401 - connects the receiver

        hooks.register_after_ingest(services.after_ingest)
