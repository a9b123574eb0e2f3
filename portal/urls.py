"""/portal/: the customer portal (accounts, dashboard, invoices, usage export, budget)."""

from django.urls import path

from portal import billing, views

app_name = "portal"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("breakdown/", views.breakdown, name="breakdown"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/complete/",
        views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("invoices/", views.invoice_list, name="invoices"),
    path("invoices/<int:invoice_id>/", views.invoice_detail, name="invoice"),
    path("invoices/<int:invoice_id>/document/", views.invoice_document, name="invoice_document"),
    path("invoices/<int:invoice_id>/invoice.pdf", views.invoice_pdf, name="invoice_pdf"),
    path("billing/", billing.billing, name="billing"),
    path("billing/payment-method/", billing.add_payment_method, name="add_payment_method"),
    path("export/", views.export, name="export"),
    path("budget/", views.budget, name="budget"),
    path("budget/acknowledge/", views.acknowledge, name="acknowledge"),
]
