"""factory_boy factories for the domain models."""

from __future__ import annotations

import factory

from metering.models import Customer, Meter


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer
        django_get_or_create = ("external_id",)

    external_id = factory.Sequence(lambda n: f"cust-{n}")
    name = factory.LazyAttribute(lambda o: f"Customer {o.external_id}")
    emails = factory.LazyAttribute(lambda o: [f"billing@{o.external_id}.example"])
    currency = "USD"
    timezone = "UTC"


class MeterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Meter
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"meter_{n}")
    name = factory.LazyAttribute(lambda o: o.code.replace("_", " ").title())
    unit = "unit"
    aggregation = "sum"
