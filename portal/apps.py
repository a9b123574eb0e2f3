from django.apps import AppConfig


class PortalConfig(AppConfig):
    """The customer portal: usage, budget and invoices for a customer's own logins.

    It reads and writes only through metering, invoicing and notifications; nothing imports it.
    """

    default_auto_field = "django.db.models.BigAutoField"
    name = "portal"
    verbose_name = "Customer portal"
