from django.urls import path

from budgets import views

urlpatterns = [
    path(
        "customers/<path:customer_id>/allowance",
        views.AllowanceView.as_view(),
        name="api-customer-allowance",
    ),
    path(
        "customers/<path:customer_id>/budget/acknowledge",
        views.AcknowledgeView.as_view(),
        name="api-customer-budget-acknowledge",
    ),
    path(
        "customers/<path:customer_id>/budget",
        views.BudgetView.as_view(),
        name="api-customer-budget",
    ),
]
