"""The Lago sandbox: a small Lago-compatible HTTP server for customers, subscriptions, usage events and invoices.

``bizosaas dev`` runs it (``python -m sandboxes.lago --port P --api-key K``) unless
``BIZ_LAGO_API_KEY`` names a real Lago; the tests run it in-process. State lives in memory and
``GET /api/v1/events`` lists what would have been billed.

It answers the requests ``lago-python-client`` makes, with the shapes Lago answers them
(``{"customer": {...}}``, ``{"events": [...], "meta": {...}}``, Lago's error bodies), so the
real client runs against it. State lives in memory in a :class:`LagoState` (tests read it).

Like Lago with its Postgres event store, a second event with the same ``transaction_id`` is
refused with 422 ``{"error_details": {"transaction_id": ["value_already_exist"]}}`` and not
counted again.

Invoices are Lago's one-off invoices (``POST /api/v1/invoices``: add-on fees for a customer),
finalized at once with no taxes, coupons or credits, and payment ``pending`` (``succeeded`` when
they total zero); ``PUT /api/v1/invoices/{lago_id}`` sets their ``payment_status`` and
``metadata`` as Lago's update does, and ``GET /api/v1/invoices`` lists them newest issuing date
first with Lago's filters and pagination. Unlike Lago, which issues a one-off invoice on the day
it is created, a sandbox invoice may name its ``issuing_date`` (``YYYY-MM-DD``, by default today
in UTC), so that invoices can be placed in a past period; and since the sandbox keeps no add-on
catalogue, a fee gives its ``unit_amount_cents`` (and may name its add-on with ``name``).

Not served: plans, add-ons, wallets, coupons, credit notes, batch events, invoice PDFs.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from litestar import Litestar, Request, Response, Router, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_422_UNPROCESSABLE_ENTITY,
)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class LagoState:
    api_key: str = "lago-test-key"
    # None: any plan code is accepted; otherwise an unknown one is 404 plan_not_found.
    plans: set[str] | None = None
    # None: any add-on code is accepted; otherwise an unknown one is 404 add_on_not_found.
    add_ons: set[str] | None = None
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external_id
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external_id
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # by transaction_id
    event_posts: int = 0  # every POST /events, refused duplicates included
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)  # by lago_id, in creation order

    def events_of(self, external_subscription_id: str, code: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events.values()
            if e["external_subscription_id"] == external_subscription_id and (code is None or e["code"] == code)
        ]


# --- Lago's error bodies ------------------------------------------------------------------

def _not_found(resource: str) -> Response[dict[str, Any]]:
    return Response(
        {"status": 404, "error": "Not Found", "code": f"{resource}_not_found"}, status_code=HTTP_404_NOT_FOUND
    )


def _invalid(errors: dict[str, list[str]]) -> Response[dict[str, Any]]:
    return Response(
        {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors", "error_details": errors},
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _ok(body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(body, status_code=HTTP_200_OK)


def _page(key: str, items: list[dict[str, Any]]) -> Response[dict[str, Any]]:
    meta = {"current_page": 1, "next_page": None, "prev_page": None, "total_pages": 1, "total_count": len(items)}
    return _ok({key: items, "meta": meta})


def _bad_request(root: str) -> Response[dict[str, Any]]:
    """Lago (Rails) when the request's root object is missing or empty."""
    return Response(
        {"status": 400, "error": f"BadRequest: param is missing or the value is empty: {root}"},
        status_code=HTTP_400_BAD_REQUEST,
    )


def _state(request: Request[Any, Any, Any]) -> LagoState:
    return request.app.state.lago


async def _authenticate(request: Request[Any, Any, Any]) -> Response[dict[str, Any]] | None:
    if request.headers.get("authorization") != f"Bearer {_state(request).api_key}":
        return Response({"status": 401, "error": "Unauthorized"}, status_code=HTTP_401_UNAUTHORIZED)
    return None


# --- Customers ----------------------------------------------------------------------------

def _upsert_customer(lago: LagoState, fields: dict[str, Any]) -> dict[str, Any]:
    now = _now()
    customer = lago.customers.get(fields["external_id"])
    if customer is None:
        customer = {"lago_id": str(uuid.uuid4()), "created_at": now, "currency": None, "timezone": None}
        lago.customers[fields["external_id"]] = customer
    customer.update({k: v for k, v in fields.items() if v is not None})
    customer["updated_at"] = now
    customer["applicable_timezone"] = customer.get("timezone") or "UTC"
    return customer


@post("/customers", status_code=HTTP_200_OK)
async def create_customer(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> Response[dict[str, Any]]:
    fields = data.get("customer") or {}
    if not fields.get("external_id"):
        return _invalid({"external_id": ["value_is_mandatory"]})
    return _ok({"customer": _upsert_customer(_state(request), fields)})


@get("/customers")
async def list_customers(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    return _page("customers", list(_state(request).customers.values()))


@get("/customers/{external_id:str}")
async def find_customer(request: Request[Any, Any, Any], external_id: FromPath[str]) -> Response[dict[str, Any]]:
    customer = _state(request).customers.get(external_id)
    return _ok({"customer": customer}) if customer else _not_found("customer")


# --- Subscriptions ------------------------------------------------------------------------

@post("/subscriptions", status_code=HTTP_200_OK)
async def create_subscription(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> Response[dict[str, Any]]:
    lago = _state(request)
    fields = data.get("subscription") or {}
    missing = {k: ["value_is_mandatory"] for k in ("external_customer_id", "plan_code") if not fields.get(k)}
    if missing:
        return _invalid(missing)
    if lago.plans is not None and fields["plan_code"] not in lago.plans:
        return _not_found("plan")
    customer = lago.customers.get(fields["external_customer_id"]) or _upsert_customer(
        lago, {"external_id": fields["external_customer_id"]}
    )
    lago_id = str(uuid.uuid4())
    external_id = fields.get("external_id") or lago_id
    sub = lago.subscriptions.get(external_id)
    if sub is None:  # Lago: the same external_id is the same subscription (a new plan: a plan change)
        now = _now()
        sub = {
            "lago_id": lago_id, "external_id": external_id, "status": "active",
            "lago_customer_id": customer["lago_id"], "external_customer_id": customer["external_id"],
            "name": fields.get("name"), "billing_time": fields.get("billing_time") or "calendar",
            "created_at": now, "started_at": now, "subscription_at": now,
        }
        lago.subscriptions[external_id] = sub
    elif sub["external_customer_id"] != fields["external_customer_id"]:
        return _invalid({"external_id": ["value_already_exist"]})
    sub["plan_code"] = fields["plan_code"]
    return _ok({"subscription": sub})


@get("/subscriptions")
async def list_subscriptions(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    customer = request.query_params.get("external_customer_id")
    subs = [s for s in _state(request).subscriptions.values() if customer in (None, s["external_customer_id"])]
    return _page("subscriptions", subs)


@get("/subscriptions/{external_id:str}")
async def find_subscription(request: Request[Any, Any, Any], external_id: FromPath[str]) -> Response[dict[str, Any]]:
    sub = _state(request).subscriptions.get(external_id)
    return _ok({"subscription": sub}) if sub else _not_found("subscription")


# --- Events -------------------------------------------------------------------------------

def _timestamp(value: Any) -> str:
    if value in (None, ""):
        return _now()
    try:
        return datetime.fromtimestamp(float(value), UTC).isoformat().replace("+00:00", "Z")
    except (TypeError, ValueError):
        return str(value)


@post("/events", status_code=HTTP_200_OK)
async def create_event(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> Response[dict[str, Any]]:
    lago = _state(request)
    lago.event_posts += 1
    fields = data.get("event") or {}
    errors = {k: ["value_is_mandatory"] for k in ("transaction_id", "code") if not fields.get(k)}
    if not (fields.get("external_subscription_id") or fields.get("external_customer_id")):
        errors["external_subscription_id"] = ["value_is_mandatory"]
    if errors:
        return _invalid(errors)
    if fields["transaction_id"] in lago.events:
        return _invalid({"transaction_id": ["value_already_exist"]})
    sub = lago.subscriptions.get(fields.get("external_subscription_id") or "")
    event = {
        "lago_id": str(uuid.uuid4()),
        "transaction_id": fields["transaction_id"],
        "lago_customer_id": sub["lago_customer_id"] if sub else None,
        "lago_subscription_id": sub["lago_id"] if sub else None,
        "external_subscription_id": fields.get("external_subscription_id") or "",
        "external_customer_id": fields.get("external_customer_id"),
        "code": fields["code"],
        "timestamp": _timestamp(fields.get("timestamp")),
        "precise_total_amount_cents": fields.get("precise_total_amount_cents"),
        "properties": fields.get("properties") or {},
        "created_at": _now(),
    }
    lago.events[event["transaction_id"]] = event
    return _ok({"event": event})


@get("/events")
async def list_events(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    q = request.query_params
    events = [
        e for e in _state(request).events.values()
        if q.get("external_subscription_id") in (None, e["external_subscription_id"])
        and q.get("code") in (None, e["code"])
    ]
    return _page("events", events)


@get("/events/{transaction_id:str}")
async def find_event(request: Request[Any, Any, Any], transaction_id: FromPath[str]) -> Response[dict[str, Any]]:
    event = _state(request).events.get(transaction_id)
    return _ok({"event": event}) if event else _not_found("event")


# --- Invoices -----------------------------------------------------------------------------

PAYMENT_STATUSES = ("pending", "succeeded", "failed")
INVOICE_STATUSES = ("draft", "finalized", "voided", "failed", "pending")  # the ones Lago lists
INVOICES_PER_PAGE = 20  # Lago's default page size
INVOICES_MAX_PER_PAGE = 100
# In a listing Lago leaves these out of each invoice (GET /invoices/{lago_id} has them).
_DETAIL_ONLY = ("fees", "credits", "subscriptions", "billing_periods")


def _decimal_text(value: Decimal) -> str:
    """A decimal as Lago's JSON writes its BigDecimals: ``"1.0"``, ``"1.5"``, ``"12.34"``."""
    text = format(value.normalize(), "f")
    return text if "." in text else f"{text}.0"


def _number(value: Any) -> Decimal | None:
    """A JSON number or a decimal string; None when it is neither."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _one_off_fees(raw: list[Any]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The fees of a one-off invoice, checked: ``(fees, errors)``; each fee has its ``units`` and
    ``amount_cents`` (units x unit amount, rounded half up as Lago rounds)."""
    fees: list[dict[str, Any]] = []
    errors: dict[str, list[str]] = {}
    for item in raw:
        units = Decimal(1) if item.get("units") is None else _number(item.get("units"))
        if units is None or units < 0:
            errors["units"] = ["value_is_invalid"]
        unit_cents = item.get("unit_amount_cents")
        if unit_cents is None:
            errors["unit_amount_cents"] = ["value_is_mandatory"]  # no add-on catalogue to take it from
        elif isinstance(unit_cents, str) and re.fullmatch(r"\d+", unit_cents.strip()):
            unit_cents = int(unit_cents)
        if unit_cents is not None and (isinstance(unit_cents, bool) or not isinstance(unit_cents, int)
                                       or unit_cents < 0):
            errors["unit_amount_cents"] = ["value_is_invalid"]
        for text in ("name", "description", "invoice_display_name"):
            if item.get(text) is not None and not isinstance(item[text], str):
                errors[text] = ["value_is_invalid"]
        if errors:
            continue
        assert units is not None and isinstance(unit_cents, int)
        amount = int((units * unit_cents).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        fees.append({**item, "units": units, "unit_amount_cents": unit_cents, "amount_cents": amount})
    return fees, errors


def _fee(fee: dict[str, Any], invoice_id: str, customer: dict[str, Any], currency: str, now: str) -> dict[str, Any]:
    amount = fee["amount_cents"]
    code = fee["add_on_code"]
    name = fee.get("name") or code
    return {
        "lago_id": str(uuid.uuid4()), "lago_invoice_id": invoice_id,
        "lago_charge_id": None, "lago_charge_filter_id": None, "lago_fixed_charge_id": None,
        "lago_true_up_fee_id": None, "lago_true_up_parent_fee_id": None, "lago_original_fee_id": None,
        "lago_subscription_id": None, "external_subscription_id": None,
        "lago_customer_id": customer["lago_id"], "external_customer_id": customer["external_id"],
        "amount_cents": amount, "amount_currency": currency,
        "precise_amount": _decimal_text(Decimal(amount) / 100),
        "precise_unit_amount": _decimal_text(Decimal(fee["unit_amount_cents"]) / 100),
        "sub_total_excluding_taxes_amount_cents": amount,
        "sub_total_excluding_taxes_precise_amount_cents": _decimal_text(Decimal(amount)),
        "taxes_amount_cents": 0, "taxes_precise_amount": "0.0", "taxes_rate": 0.0,
        "total_amount_cents": amount, "total_amount_currency": currency,
        "precise_total_amount": _decimal_text(Decimal(amount) / 100),
        "units": _decimal_text(fee["units"]), "total_aggregated_units": _decimal_text(fee["units"]),
        "events_count": None, "description": fee.get("description"),
        "invoice_display_name": fee.get("invoice_display_name"),
        "pay_in_advance": False, "invoiceable": True, "self_billed": False,
        "payment_status": "pending", "created_at": now,
        "succeeded_at": None, "failed_at": None, "refunded_at": None, "from_date": None, "to_date": None,
        "amount_details": {},
        "item": {
            "type": "add_on", "code": code, "name": name,
            "invoice_display_name": fee.get("invoice_display_name") or name,
            "filter_invoice_display_name": None, "filters": None, "grouped_by": {},
            "lago_item_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lago-sandbox:add_on:{code}")), "item_type": "AddOn",
        },
        "applied_taxes": [],
    }


def _set_payment_status(invoice: dict[str, Any], status: str, now: str) -> None:
    invoice["payment_status"] = status
    paid = invoice["total_amount_cents"] if status == "succeeded" else 0
    invoice["total_paid_amount_cents"] = paid
    invoice["total_due_amount_cents"] = invoice["total_amount_cents"] - paid
    for fee in invoice["fees"]:
        fee["payment_status"] = status
        fee["succeeded_at"] = now if status == "succeeded" else None
        fee["failed_at"] = now if status == "failed" else None


def _invoice_view(lago: LagoState, invoice: dict[str, Any], listing: bool = False) -> dict[str, Any]:
    """An invoice as Lago serializes it, with its customer as it stands now."""
    view = {k: v for k, v in invoice.items() if not k.startswith("_") and not (listing and k in _DETAIL_ONLY)}
    view["customer"] = lago.customers.get(invoice["_external_customer_id"])
    return view


@post("/invoices", status_code=HTTP_200_OK)
async def create_invoice(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> Response[dict[str, Any]]:
    """Lago's one-off invoice: add-on fees for an existing customer, finalized at once.

    As Lago checks them: an unknown customer is 404 ``customer_not_found``, no fees 404
    ``fees_not_found``, a fee without a known add-on code 404 ``add_on_not_found``; bad fields
    are 422. Sandbox-only: ``issuing_date`` (``YYYY-MM-DD``, default today in UTC).
    """
    lago = _state(request)
    fields = data.get("invoice")
    if not isinstance(fields, dict) or not fields:
        return _bad_request("invoice")
    customer = lago.customers.get(fields.get("external_customer_id") or "")
    if customer is None:
        return _not_found("customer")
    raw_fees = fields.get("fees")
    if not isinstance(raw_fees, list) or not raw_fees:
        return _not_found("fees")
    if not all(isinstance(f, dict) and isinstance(f.get("add_on_code"), str) and f["add_on_code"] for f in raw_fees):
        return _not_found("add_on")
    if lago.add_ons is not None and any(f["add_on_code"] not in lago.add_ons for f in raw_fees):
        return _not_found("add_on")
    fees, errors = _one_off_fees(raw_fees)
    currency = fields.get("currency") or customer.get("currency")
    if not currency:
        errors["currency"] = ["value_is_mandatory"]
    elif not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        errors["currency"] = ["value_is_invalid"]
    elif customer.get("currency") not in (None, currency):
        errors["currency"] = ["currencies_does_not_match"]
    issuing = datetime.now(UTC).date()
    if fields.get("issuing_date") is not None:
        issuing = _date(fields["issuing_date"]) or issuing
        if _date(fields["issuing_date"]) is None:
            errors["issuing_date"] = ["invalid_date"]
    if errors:
        return _invalid(errors)

    customer["currency"] = currency  # Lago sets a customer's currency from its first invoice
    now = _now()
    invoice_id = str(uuid.uuid4())
    external_id = customer["external_id"]
    sequential_id = 1 + sum(1 for i in lago.invoices.values() if i["_external_customer_id"] == external_id)
    customer_number = 1 + list(lago.customers).index(external_id)
    net_term = int(customer.get("net_payment_term") or 0)
    total = sum(f["amount_cents"] for f in fees)
    invoice: dict[str, Any] = {
        "_external_customer_id": external_id,
        "lago_id": invoice_id, "billing_entity_code": fields.get("billing_entity_code"),
        "sequential_id": sequential_id, "number": f"SBX-0001-{customer_number:03d}-{sequential_id:03d}",
        "purchase_order_number": fields.get("purchase_order_number"),
        "issuing_date": issuing.isoformat(), "payment_due_date": (issuing + timedelta(days=net_term)).isoformat(),
        "payment_dispute_lost_at": None, "payment_overdue": False, "net_payment_term": net_term,
        "invoice_type": "one_off", "version_number": 4, "status": "finalized", "payment_status": "pending",
        "currency": currency, "fees_amount_cents": total, "coupons_amount_cents": 0, "taxes_amount_cents": 0,
        "credit_notes_amount_cents": 0, "progressive_billing_credit_amount_cents": 0,
        "prepaid_credit_amount_cents": 0, "prepaid_granted_credit_amount_cents": 0,
        "prepaid_purchased_credit_amount_cents": 0, "total_offsetted_credit_note_amount_cents": 0,
        "sub_total_excluding_taxes_amount_cents": total, "sub_total_including_taxes_amount_cents": total,
        "total_amount_cents": total, "total_due_amount_cents": total, "total_paid_amount_cents": 0,
        "self_billed": False, "voided_at": None, "file_url": None, "xml_url": None,
        "created_at": now, "updated_at": now,
        "metadata": [], "applied_taxes": [], "applied_invoice_custom_sections": [], "applied_usage_thresholds": [],
        "error_details": [], "billing_periods": [], "subscriptions": [], "credits": [],
        "fees": [_fee(f, invoice_id, customer, currency, now) for f in fees],
    }
    # Lago: an invoice of nothing to pay is paid.
    _set_payment_status(invoice, "pending" if total > 0 else "succeeded", now)
    lago.invoices[invoice_id] = invoice
    return _ok({"invoice": _invoice_view(lago, invoice)})


@get("/invoices/{lago_id:str}")
async def find_invoice(request: Request[Any, Any, Any], lago_id: FromPath[str]) -> Response[dict[str, Any]]:
    lago = _state(request)
    invoice = lago.invoices.get(lago_id)
    return _ok({"invoice": _invoice_view(lago, invoice)}) if invoice else _not_found("invoice")


def _valid_metadata(items: Any) -> bool:
    return isinstance(items, list) and all(
        isinstance(m, dict) and isinstance(m.get("key"), str) and m["key"]
        and (m.get("value") is None or isinstance(m["value"], str))
        and (m.get("id") is None or isinstance(m["id"], str))
        for m in items
    )


@put("/invoices/{lago_id:str}", status_code=HTTP_200_OK)
async def update_invoice(
    request: Request[Any, Any, Any], lago_id: FromPath[str], data: JSONBody[dict[str, Any]]
) -> Response[dict[str, Any]]:
    """Lago's update: ``payment_status`` (pending, succeeded, failed) and ``metadata`` (a list of
    ``{"id"?, "key", "value"}``: an item with the ``id`` of one the invoice has changes it, one
    without adds one, and the invoice's other metadata are removed)."""
    lago = _state(request)
    invoice = lago.invoices.get(lago_id)
    if invoice is None:
        return _not_found("invoice")
    fields = data.get("invoice")
    if not isinstance(fields, dict) or not fields:
        return _bad_request("invoice")
    errors: dict[str, list[str]] = {}
    status = fields.get("payment_status")
    if status is not None and status not in PAYMENT_STATUSES:
        errors["payment_status"] = ["value_is_invalid"]
    metadata = fields.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        errors["metadata"] = ["value_is_invalid"]
    if errors:
        return _invalid(errors)
    now = _now()
    if status is not None:
        _set_payment_status(invoice, status, now)
    if metadata is not None:
        current = {m["lago_id"]: m for m in invoice["metadata"]}
        kept: list[dict[str, Any]] = []
        for item in metadata:
            existing = current.get(item.get("id") or "")
            if existing is not None:
                existing.update(key=item["key"], value=item.get("value"))
                kept.append(existing)
            else:
                kept.append({"lago_id": str(uuid.uuid4()), "key": item["key"], "value": item.get("value"),
                             "created_at": now})
        invoice["metadata"] = kept
    invoice["updated_at"] = now
    return _ok({"invoice": _invoice_view(lago, invoice)})


def _query_values(request: Request[Any, Any, Any], name: str) -> list[str]:
    """A filter given once (``status=x``) or as a list (``status[]=x&status[]=y``)."""
    q = request.query_params
    return [v for v in (*q.getall(name, []), *q.getall(f"{name}[]", [])) if v != ""]


def _positive(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else default


def _paginate(request: Request[Any, Any, Any], key: str, items: list[dict[str, Any]]) -> Response[dict[str, Any]]:
    """One page of ``items`` with Lago's (Kaminari's) ``meta``: ``page`` from 1, ``per_page``
    up to 100; past the last page, an empty page."""
    q = request.query_params
    page = _positive(q.get("page"), 1)
    per_page = min(_positive(q.get("per_page"), INVOICES_PER_PAGE), INVOICES_MAX_PER_PAGE)
    total_pages = math.ceil(len(items) / per_page)
    out_of_range = page > total_pages
    meta = {
        "current_page": page,
        "next_page": page + 1 if page < total_pages else None,
        "prev_page": page - 1 if page > 1 and not out_of_range else None,
        "total_pages": total_pages,
        "total_count": len(items),
    }
    return _ok({key: items[(page - 1) * per_page:page * per_page], "meta": meta})


@get("/invoices")
async def list_invoices(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Lago's filters: ``external_customer_id``, ``status``, ``payment_status``, ``invoice_type``,
    ``currency``, ``issuing_date_from`` / ``issuing_date_to`` (inclusive); newest issuing date
    first (then newest created)."""
    lago = _state(request)
    q = request.query_params
    errors: dict[str, list[str]] = {}
    statuses, payment_statuses = _query_values(request, "status"), _query_values(request, "payment_status")
    if any(s not in INVOICE_STATUSES for s in statuses):
        errors["status"] = [f"must be one of: {', '.join(INVOICE_STATUSES)}"]
    if any(s not in PAYMENT_STATUSES for s in payment_statuses):
        errors["payment_status"] = [f"must be one of: {', '.join(PAYMENT_STATUSES)}"]
    bounds: dict[str, date | None] = {}
    for name in ("issuing_date_from", "issuing_date_to"):
        raw = q.get(name) or None
        bounds[name] = _date(raw) if raw else None
        if raw and bounds[name] is None:
            errors[name] = ["invalid_date"]
    if errors:
        return _invalid(errors)
    since, until = bounds["issuing_date_from"], bounds["issuing_date_to"]
    customer, kind, currency = q.get("external_customer_id"), q.get("invoice_type"), q.get("currency")
    found = [
        i for i in reversed(lago.invoices.values())  # newest created first, then by issuing date (stable)
        if customer in (None, i["_external_customer_id"])
        and (not statuses or i["status"] in statuses)
        and (not payment_statuses or i["payment_status"] in payment_statuses)
        and kind in (None, i["invoice_type"]) and currency in (None, i["currency"])
        and (since is None or date.fromisoformat(i["issuing_date"]) >= since)
        and (until is None or date.fromisoformat(i["issuing_date"]) <= until)
    ]
    found.sort(key=lambda i: i["issuing_date"], reverse=True)
    return _paginate(request, "invoices", [_invoice_view(lago, i, listing=True) for i in found])


def create_lago_app(state: LagoState, prefix: str = "") -> Litestar:
    """The app; ``prefix`` mounts the API under a path (``{prefix}/api/v1/...``)."""
    api = Router(
        path=f"{prefix}/api/v1",
        route_handlers=[
            create_customer, list_customers, find_customer,
            create_subscription, list_subscriptions, find_subscription,
            create_event, list_events, find_event,
            create_invoice, list_invoices, find_invoice, update_invoice,
        ],
    )
    return Litestar(
        route_handlers=[api], before_request=_authenticate, state=State({"lago": state}), openapi_config=None
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m sandboxes.lago", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--prefix", default="", help="serve the API under {prefix}/api/v1")
    args = parser.parse_args(argv)
    # The key comes from the environment, never from the command line (ps would show it).
    api_key = os.environ.get("BIZ_LAGO_API_KEY") or "lago-sandbox-key"
    app = create_lago_app(LagoState(api_key=api_key), prefix=args.prefix)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
