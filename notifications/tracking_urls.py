"""The e-mail provider's tracking webhook (django-anymail), and no other provider's.

Mounted under /anymail/ by the project's URLs: only `<provider>/tracking/` of the provider
`settings.EMAIL_TRACKING_PROVIDER` names (set only when the webhook is authenticated, see
billing_project/settings/email.py). Inbound-mail webhooks are never mounted: no mail is read.

anymail answers an unauthenticated post 400 before reading it. A post that passes
authentication but whose body the provider's parser cannot read is answered 400 here too
(anymail would raise from its parser, a 500, and the provider would retry it forever).
"""

from __future__ import annotations

from anymail import urls as anymail_urls
from anymail.exceptions import AnymailConfigurationError, AnymailWebhookValidationFailure
from django.conf import settings
from django.urls import URLPattern, path
from django.views import View

# What a provider's parser raises on a body of the wrong shape (or of the wrong webhook).
_PARSE_ERRORS = (ValueError, TypeError, AttributeError, LookupError, AnymailConfigurationError)


def _readable_only(view_class: type[View]) -> type[View]:
    """The provider's view, answering 400 to a body its parser cannot read."""

    def parse_events(self, request):
        try:
            return view_class.parse_events(self, request)
        except _PARSE_ERRORS as exc:
            raise AnymailWebhookValidationFailure(
                f"unreadable {self.esp_name} tracking webhook: {type(exc).__name__}"
            ) from None

    return type(view_class.__name__, (view_class,), {"parse_events": parse_events})


def tracking_urlpatterns(provider: str) -> list[URLPattern]:
    if not provider:
        return []
    name = f"{provider}_tracking_webhook"
    found = [p for p in anymail_urls.urlpatterns if getattr(p, "name", None) == name]
    if not found:
        return []
    view_class = found[0].callback.view_class
    return [path(f"{provider}/tracking/", _readable_only(view_class).as_view(), name=name)]


app_name = "anymail"
urlpatterns = tracking_urlpatterns(settings.EMAIL_TRACKING_PROVIDER)
