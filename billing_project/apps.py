"""The admin app with the back office's own AdminSite as `admin.site` (see admin_site.py)."""

from django.contrib.admin.apps import AdminConfig


class BillingAdminConfig(AdminConfig):
    default_site = "billing_project.admin_site.BillingAdminSite"
