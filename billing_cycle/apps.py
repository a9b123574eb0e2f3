from django.apps import AppConfig


class BillingCycleConfig(AppConfig):
    name = "billing_cycle"
    verbose_name = "Billing cycle"
