"""The project's own app configs: the admin with the back office's AdminSite as `admin.site`
(see admin_site.py), and the project itself, which registers the deployment checks."""

from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class BillingAdminConfig(AdminConfig):
    default_site = "billing_project.admin_site.BillingAdminSite"


class ProjectConfig(AppConfig):
    name = "billing_project"
    verbose_name = "Billing project"

    def ready(self) -> None:
        from billing_project import checks  # noqa: F401 - registers the deployment checks
