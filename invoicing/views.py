"""The invoicing side of the agent API: customers with plans, plans, usage so far, invoices."""

from __future__ import annotations

from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_project.api_errors import ErrorOutput
from invoicing import selectors
from invoicing.serializers import (
    CustomerWithPlanInput,
    InvoiceOutput,
    PlanInput,
    PlanOutput,
    UsageOutput,
)
from invoicing.services import plans, subscriptions
from metering import selectors as metering_selectors
from metering.authentication import HasApiKey, IsServiceWideKey, request_api_key
from metering.models import Customer
from metering.serializers import CustomerOutput


def customer_for_request(request: Request, customer_id: str) -> Customer:
    """The customer named in the URL if the key may see it; 404 otherwise (no existence leak)."""
    customer = metering_selectors.get_customer_visible_to_key(
        api_key=request_api_key(request), external_id=customer_id
    )
    if customer is None:
        raise Http404("unknown customer")
    return customer


class CustomersView(APIView):
    """`POST /api/v1/customers`: create (201) or update (200) a customer by its external id,
    optionally putting it on a plan (`"plan": "<code>"`, effective from the next period)."""

    permission_classes = [IsServiceWideKey]

    @extend_schema(
        operation_id="upsert_customer",
        request=CustomerWithPlanInput,
        responses={
            200: CustomerOutput,
            201: CustomerOutput,
            401: ErrorOutput,
            403: ErrorOutput,
            422: ErrorOutput,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = CustomerWithPlanInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        plan = None
        if "plan" in data:
            plan = plans.latest_plan(data["plan"])
            if plan is None:
                raise subscriptions.SubscriptionInvalid("unknown plan", field="plan")
        customer, created = subscriptions.provision_customer(
            external_id=data["customer_id"],
            name=data.get("name"),
            emails=data.get("emails"),
            currency=data.get("currency"),
            timezone_name=data.get("timezone"),
            plan=plan,
            now=timezone.now(),
        )
        return Response(
            CustomerOutput(customer).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class PlansView(APIView):
    """`POST /api/v1/plans`: create a plan, or the next version of it, by code."""

    permission_classes = [IsServiceWideKey]

    @extend_schema(
        operation_id="create_plan_version",
        request=PlanInput,
        responses={201: PlanOutput, 401: ErrorOutput, 403: ErrorOutput, 422: ErrorOutput},
    )
    def post(self, request: Request) -> Response:
        serializer = PlanInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        plan = plans.create_plan_version(
            code=data["code"],
            name=data["name"],
            currency=data["currency"],
            interval=data["interval"],
            prices=[plans.price_from_json(item) for item in data["prices"]],
        )
        return Response(PlanOutput(plan).data, status=status.HTTP_201_CREATED)


class CustomerUsageView(APIView):
    """`GET /api/v1/customers/<id>/usage`: the current period so far, rated as the invoice."""

    permission_classes = [HasApiKey]

    @extend_schema(operation_id="current_usage", responses={200: UsageOutput, 404: ErrorOutput})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        period = selectors.current_period(customer=customer, now=timezone.now())
        if period is None:
            raise Http404("the customer has no plan")
        preview = selectors.preview_period_usage(period=period)
        return Response(
            UsageOutput(
                {
                    "customer_id": customer.external_id,
                    "currency": preview.currency,
                    "period_start": period.start,
                    "period_end": period.end,
                    "lines": preview.lines,
                    "total_minor": preview.total_minor,
                }
            ).data
        )


class CustomerInvoicesView(APIView):
    """`GET /api/v1/customers/<id>/invoices`: the customer's invoices, newest first."""

    permission_classes = [HasApiKey]

    @extend_schema(operation_id="list_invoices", responses={200: InvoiceOutput(many=True)})
    def get(self, request: Request, customer_id: str) -> Response:
        customer = customer_for_request(request, customer_id)
        invoices = selectors.list_customer_invoices(customer=customer)
        return Response(InvoiceOutput(invoices, many=True).data)
