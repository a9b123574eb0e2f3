from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    verbose_name = "Metering"

    def ready(self) -> None:
        from metering import schema  # noqa: F401 - registers the API key scheme for the schema
