"""Budget endpoints: the allowance agents ask before work, the cap, and acknowledging a pause.

The GETs read through budgets.selectors (no lock, no write); PUT and the acknowledgement call
budgets.services.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_project.api_errors import ErrorOutput
from budgets import selectors, services
from budgets.serializers import AllowanceOutput, BudgetInput, BudgetOutput
from invoicing.views import customer_for_request
from metering.authentication import HasApiKey, request_api_key


class AllowanceView(APIView):
    """`GET /api/v1/customers/<id>/allowance`: active, warning or paused (stop work)."""

    permission_classes = [HasApiKey]

    @extend_schema(operation_id="allowance", responses={200: AllowanceOutput, 404: ErrorOutput})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        state = selectors.get_budget_status(customer=customer, now=timezone.now())
        return Response(AllowanceOutput(state).data)


class BudgetView(APIView):
    """`GET`/`PUT /api/v1/customers/<id>/budget`: the cap (`cap_minor: null` removes it)."""

    permission_classes = [HasApiKey]

    @extend_schema(operation_id="get_budget", responses={200: BudgetOutput, 404: ErrorOutput})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        state = selectors.get_budget_status(customer=customer, now=timezone.now())
        return Response(BudgetOutput(state).data)

    @extend_schema(
        operation_id="set_budget",
        request=BudgetInput,
        responses={200: BudgetOutput, 404: ErrorOutput, 422: ErrorOutput},
    )
    def put(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        serializer = BudgetInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        state = services.set_budget_cap(
            customer=customer,
            cap_minor=data["cap_minor"],
            thresholds=data["thresholds"],
            action=data["action"],
            now=timezone.now(),
            actor_label=request_api_key(request).actor_label,
        )
        return Response(BudgetOutput(state).data)


class AcknowledgeView(APIView):
    """`POST /api/v1/customers/<id>/budget/acknowledge`: resume for the rest of the period."""

    permission_classes = [HasApiKey]

    @extend_schema(
        operation_id="acknowledge_pause",
        request=None,
        responses={200: BudgetOutput, 404: ErrorOutput, 409: ErrorOutput},
    )
    def post(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        state = services.acknowledge_pause(  # services.NothingPaused: 409
            customer=customer,
            now=timezone.now(),
            actor_label=request_api_key(request).actor_label,
        )
        return Response(BudgetOutput(state).data)
