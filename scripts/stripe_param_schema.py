"""Regenerate tests/stripe_params.json: the request parameters Stripe accepts for each operation
the Stripe backend calls, the schema the fake Stripe (tests/fake_stripe.py) validates against.

Source: the parameter types of the pinned `stripe` library (`stripe.params`), which Stripe
generates from its published OpenAPI spec (github.com/stripe/openapi) for the API version the
library pins (`stripe.api_version`); the library release and that API version are written into
the data file. Only the operations listed in OPERATIONS are extracted, so the file stays small.

Usage: python scripts/stripe_param_schema.py [--check]  (--check: exit 1 if the file is stale)

Schema nodes (JSON):
  {"type": "string" | "integer" | "boolean" | "number" | "decimal"}
  {"enum": [...]}                       a fixed set of strings
  {"type": "array", "items": node}
  {"type": "object", "properties": {name: node}, "required": [names]}
  {"type": "object", "additional": node}   a map (metadata, payload)
  {"anyOf": [node, ...]}
"""

from __future__ import annotations

import importlib
import json
import sys
import typing
from pathlib import Path
from typing import Any

import stripe
import typing_extensions
from stripe._request_options import RequestOptions

OUT = Path(__file__).resolve().parent.parent / "tests" / "stripe_params.json"

# (method, path as the fake routes it) -> (module in stripe.params, parameter class)
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/v1/customers"): ("stripe.params", "CustomerCreateParams"),
    ("GET", "/v1/customers/search"): ("stripe.params", "CustomerSearchParams"),
    ("GET", "/v1/customers/{id}"): ("stripe.params", "CustomerRetrieveParams"),
    ("POST", "/v1/customers/{id}"): ("stripe.params", "CustomerUpdateParams"),
    ("POST", "/v1/invoices"): ("stripe.params", "InvoiceCreateParams"),
    ("GET", "/v1/invoices"): ("stripe.params", "InvoiceListParams"),
    ("GET", "/v1/invoices/{id}"): ("stripe.params", "InvoiceRetrieveParams"),
    ("POST", "/v1/invoices/{id}/finalize"): ("stripe.params", "InvoiceFinalizeInvoiceParams"),
    ("POST", "/v1/invoices/{id}/pay"): ("stripe.params", "InvoicePayParams"),
    ("POST", "/v1/invoices/{id}/send"): ("stripe.params", "InvoiceSendInvoiceParams"),
    ("POST", "/v1/invoices/{id}/void"): ("stripe.params", "InvoiceVoidInvoiceParams"),
    ("POST", "/v1/invoices/{id}/mark_uncollectible"): (
        "stripe.params",
        "InvoiceMarkUncollectibleParams",
    ),
    ("POST", "/v1/invoiceitems"): ("stripe.params", "InvoiceItemCreateParams"),
    ("GET", "/v1/invoiceitems"): ("stripe.params", "InvoiceItemListParams"),
    ("POST", "/v1/credit_notes"): ("stripe.params", "CreditNoteCreateParams"),
    ("GET", "/v1/credit_notes"): ("stripe.params", "CreditNoteListParams"),
    ("POST", "/v1/billing/meter_events"): ("stripe.params.billing", "MeterEventCreateParams"),
    ("GET", "/v1/billing/meters"): ("stripe.params.billing", "MeterListParams"),
    ("GET", "/v1/billing/meters/{id}/event_summaries"): (
        "stripe.params.billing",
        "MeterListEventSummariesParams",
    ),
    ("POST", "/v1/checkout/sessions"): ("stripe.params.checkout", "SessionCreateParams"),
    ("GET", "/v1/checkout/sessions/{id}"): ("stripe.params.checkout", "SessionRetrieveParams"),
    ("GET", "/v1/setup_intents/{id}"): ("stripe.params", "SetupIntentRetrieveParams"),
}

_REQUEST_OPTIONS = set(RequestOptions.__annotations__)


def _hints(cls: type) -> dict[str, Any]:
    """The class's own parameters (not the client's request options), evaluated in its module
    (the library writes some as strings, e.g. "Literal['']|str")."""
    module = sys.modules[cls.__module__]
    namespace = {**vars(typing), **vars(typing_extensions), **vars(module)}
    skip = _REQUEST_OPTIONS if issubclass_request_options(cls) else set()
    return {
        name: _evaluate(annotation, namespace)
        for name, annotation in cls.__annotations__.items()
        if name not in skip
    }


def issubclass_request_options(cls: type) -> bool:
    return all(name in cls.__annotations__ for name in _REQUEST_OPTIONS)


def _evaluate(annotation: Any, namespace: dict[str, Any]) -> Any:
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        return _evaluate(eval(annotation, namespace), namespace)  # noqa: S307 (library source)
    origin = typing.get_origin(annotation)
    if origin in (typing_extensions.NotRequired, typing_extensions.Required):
        return _evaluate(typing.get_args(annotation)[0], namespace)
    return annotation


def _node(tp: Any, namespace: dict[str, Any], seen: tuple[type, ...] = ()) -> dict[str, Any]:
    tp = _evaluate(tp, namespace)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if getattr(tp, "__name__", "") == "Decimal":  # sent as a decimal string
        return {"type": "decimal"}
    if origin in (typing.Literal, typing_extensions.Literal):
        return {"enum": list(args)}
    if origin in (list, typing.List):  # noqa: UP006
        return {"type": "array", "items": _node(args[0], namespace, seen)}
    if origin in (dict, typing.Dict) or getattr(origin, "__name__", "") == "UntypedStripeObject":  # noqa: UP006
        return {"type": "object", "additional": _node(args[-1], namespace, seen)}
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        options = []
        for arg in args:
            option = _node(arg, namespace, seen) if arg is not type(None) else None
            if option is not None and option not in options:
                options.append(option)
        enums = [o for o in options if set(o) == {"enum"}]
        rest = [o for o in options if set(o) != {"enum"}]
        values = [v for e in enums for v in e["enum"]]
        if any(v != "" for v in values) and {"type": "string"} in rest:
            # The library types an enum as Literal[...] | str so that values Stripe adds later
            # still type-check; the API itself accepts only the values it lists.
            rest.remove({"type": "string"})
        rest = ([{"enum": values}] if values else []) + rest
        return rest[0] if len(rest) == 1 else {"anyOf": rest}
    if isinstance(tp, type) and typing_extensions.is_typeddict(tp):
        if tp in seen:  # recursive types: accept any object below this depth
            return {"type": "object", "additional": {"anyOf": []}}
        return _object(tp, (*seen, tp))
    raise TypeError(f"no schema for {tp!r}")


def _object(cls: type, seen: tuple[type, ...]) -> dict[str, Any]:
    namespace = {**vars(typing), **vars(typing_extensions), **vars(sys.modules[cls.__module__])}
    properties = {}
    required = []
    for name, hint in _hints(cls).items():
        properties[name] = _node(hint, namespace, seen)
        if name in cls.__required_keys__:  # type: ignore[attr-defined]
            required.append(name)
    return {"type": "object", "properties": properties, "required": sorted(required)}


def build() -> dict[str, Any]:
    operations = {}
    for (method, path), (module_name, class_name) in OPERATIONS.items():
        cls = getattr(importlib.import_module(module_name), class_name)
        operations[f"{method} {path}"] = _object(cls, (cls,))
    return {
        "source": (
            "stripe-python parameter types (generated by Stripe from its OpenAPI spec); "
            "regenerate with scripts/stripe_param_schema.py"
        ),
        "stripe_library": stripe.VERSION,
        "api_version": stripe.api_version,
        "operations": operations,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale: run python scripts/stripe_param_schema.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes, {len(OPERATIONS)} operations)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
