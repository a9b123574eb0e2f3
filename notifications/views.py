"""Budget endpoints: the allowance agents ask before work, the cap, and acknowledging a pause."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from invoicing.services import budgets
from invoicing.views import customer_for_request
from metering.authentication import HasApiKey
from metering.models import BudgetCap
from metering.serializers import ErrorOutput
from notifications import services
from notifications.serializers import AllowanceOutput, BudgetInput, BudgetOutput


def _budget_payload(state: budgets.BudgetStatus) -> dict:
    cap = BudgetCap.objects.filter(customer=state.customer).first()
    state.thresholds = sorted(cap.thresholds) if cap else [50, 80, 100]
    state.action = cap.action if cap else None
    return BudgetOutput(state).data


class AllowanceView(APIView):
    """`GET /api/v1/customers/<id>/allowance`: active, warning or paused (stop work)."""

    permission_classes = [HasApiKey]

    @extend_schema(operation_id="allowance", responses={200: AllowanceOutput, 404: ErrorOutput})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        state = services.check_budget(customer=customer, now=timezone.now())
        return Response(AllowanceOutput(state).data)


class BudgetView(APIView):
    """`GET`/`PUT /api/v1/customers/<id>/budget`: the cap (`cap_minor: null` removes it)."""

    permission_classes = [HasApiKey]

    @extend_schema(operation_id="get_budget", responses={200: BudgetOutput, 404: ErrorOutput})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        return Response(
            _budget_payload(services.check_budget(customer=customer, now=timezone.now()))
        )

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
        state = services.set_budget(
            customer=customer,
            cap_minor=data["cap_minor"],
            thresholds=data["thresholds"],
            action=data["action"],
            now=timezone.now(),
            actor_label=f"api key {request.auth.prefix}",
        )
        return Response(_budget_payload(state))


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
        try:
            state = services.acknowledge(
                customer=customer,
                now=timezone.now(),
                actor_label=f"api key {request.auth.prefix}",
            )
        except budgets.NothingPaused as exc:
            return Response(
                {"errors": [{"index": None, "field": None, "message": str(exc)}]},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(_budget_payload(state))
