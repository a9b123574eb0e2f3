"""The agent API of the metering app: thin views that parse, call a service, render."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import JsonResponse
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_project.api_errors import ErrorOutput
from billing_project.errors import UnsupportedContentType
from metering import event_parsing, hooks, selectors, services
from metering.authentication import HasApiKey, request_api_key
from metering.models import ApiKey
from metering.parsers import FastJSONRenderer
from metering.serializers import IngestionOutput, MeterOutput

logger = logging.getLogger(__name__)

_EVENT_EXAMPLE = {
    "event_id": "run-42-step-7",
    "customer_id": "acme",
    "meter": "llm_tokens",
    "quantity": 1234,
    "timestamp": "2026-11-26T12:00:00Z",
    "properties": {"agent_id": "researcher", "model": "small"},
}


def _customer_statuses(customer_ids: set[int], api_key: ApiKey) -> dict[str, dict]:
    """Budget status per customer after the batch committed. The events are stored whatever
    happens here, so a failing check is logged and reported as unknown, never as a 500."""
    try:
        return hooks.after_ingest(customer_ids=customer_ids, api_key=api_key)
    except Exception:
        logger.exception("budget check after ingestion failed")
        return {}


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json"


class IngestEventsView(APIView):
    """`POST /api/v1/events`: one event, or `{"events": [...]}` with 1 to 1,000 events."""

    permission_classes = [HasApiKey]
    renderer_classes = [FastJSONRenderer]  # up to 1,000 statuses per response
    rate_limit_scope = "events"  # BILLING_RATE_LIMIT_EVENTS, counted per API key

    @extend_schema(
        operation_id="ingest_events",
        request={"application/json": {"type": "object"}},
        responses={
            202: IngestionOutput,
            400: ErrorOutput,
            401: ErrorOutput,
            409: IngestionOutput,
            413: ErrorOutput,
            415: ErrorOutput,
            422: ErrorOutput,
            429: ErrorOutput,
        },
        examples=[OpenApiExample("one event", value=_EVENT_EXAMPLE, request_only=True)],
    )
    def post(self, request: Request) -> Response:
        # Errors are raised (billing_project.errors) and answered by the API's handler.
        if not _is_json(request.META.get("CONTENT_TYPE", "")):
            raise UnsupportedContentType(
                "Content-Type must be application/json", field="content-type"
            )
        # The body is whole and within BILLING_MAX_BODY_BYTES (billing_project.request_guard).
        body = event_parsing.decode_body(request.body)
        raw_events, is_batch, errors = event_parsing.split_events(body)
        if errors:
            raise services.IngestionRejected(errors)
        api_key = request_api_key(request)
        result = services.record_usage_events(api_key=api_key, raw_events=raw_events)
        conflicts = result.count(services.CONFLICT)
        payload = {
            "accepted": result.count(services.ACCEPTED),
            "duplicates": result.count(services.DUPLICATE),
            "conflicts": conflicts,
            "events": [{"event_id": eid, "status": st} for eid, st in result.statuses],
            "customers": _customer_statuses(result.customer_ids, api_key),
        }
        code = (
            status.HTTP_409_CONFLICT if (conflicts and not is_batch) else status.HTTP_202_ACCEPTED
        )
        return Response(payload, status=code)


class MetersView(APIView):
    """`GET /api/v1/meters`: the active meters."""

    permission_classes = [HasApiKey]

    @extend_schema(
        operation_id="list_meters", responses={200: MeterOutput(many=True), 429: ErrorOutput}
    )
    def get(self, request: Request) -> Response:
        return Response(MeterOutput(selectors.list_active_meters(), many=True).data)


def healthz(request) -> JsonResponse:
    """Database and broker reachability, for load balancers and the run command."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception:  # any failure means "not reachable"; the cause goes to the log
        logger.exception("health check: database unreachable")
        checks["database"] = "unreachable"
    try:
        from billing_project.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception:
        logger.exception("health check: broker unreachable")
        checks["broker"] = "unreachable"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503
    )
