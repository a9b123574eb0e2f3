from django.urls import path

from invoicing import views

urlpatterns = [
    path("customers", views.CustomersView.as_view(), name="api-customers"),
    path("plans", views.PlansView.as_view(), name="api-plans"),
    path(
        "customers/<path:customer_id>/usage",
        views.CustomerUsageView.as_view(),
        name="api-customer-usage",
    ),
    path(
        "customers/<path:customer_id>/invoices",
        views.CustomerInvoicesView.as_view(),
        name="api-customer-invoices",
    ),
]
