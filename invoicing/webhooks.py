"""`POST /webhooks/stripe`: Stripe's events, verified by signature, applied once.

Stripe authenticates itself with the `Stripe-Signature` header (HMAC-SHA256 of the timestamp
and body with the endpoint secret), so the view takes no API key and no CSRF token. A bad or
stale signature, or a signed body that is not an event we understand (invoicing.stripe.webhooks
says which), gets 400 (the API's error shape) and changes nothing; an understood event is
stored and gets 200, as does a replayed one, which changes nothing. Never a 500: Stripe retries
those and disables endpoints that keep failing.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing_project.errors import error_response
from invoicing.stripe import webhooks
from invoicing.stripe.client import InvalidWebhook


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        event, first_time = webhooks.receive_webhook(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except InvalidWebhook as exc:
        return error_response(exc)
    return JsonResponse(
        {"received": event.event_id, "duplicate": not first_time, "outcome": event.outcome}
    )
