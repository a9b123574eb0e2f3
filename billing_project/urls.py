"""Top-level routes: the agent API under /api/v1/, its schema, the admin, health, the site's
icon and the customer portal under /portal/ (the site's front page)."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing_cycle import month_end_admin
from invoicing.webhooks import stripe_webhook
from metering.views import healthz
from portal.views import favicon

urlpatterns = [
    path("api/v1/", include("metering.urls")),
    path("api/v1/", include("budgets.urls")),
    path("api/v1/", include("invoicing.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its script from a URL: the Content-Security-Policy refuses inline ones.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    # The billing overview is the admin's front page; run-cycle and the month's exports beside it.
    *month_end_admin.urls(),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    # the configured e-mail provider's delivery and bounce webhook, when authenticated
    path("anymail/", include("notifications.tracking_urls")),
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("portal/", include("portal.urls")),
    path("", RedirectView.as_view(url="/portal/", permanent=False), name="home"),
]
