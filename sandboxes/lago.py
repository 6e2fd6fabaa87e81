"""The Lago sandbox: a small Lago-compatible HTTP server for customers, subscriptions and usage events.

``bizosaas dev`` runs it (``python -m sandboxes.lago --port P --api-key K``) unless
``BIZ_LAGO_API_KEY`` names a real Lago; the tests run it in-process. State lives in memory and
``GET /api/v1/events`` lists what would have been billed.

It answers the requests ``lago-python-client`` makes, with the shapes Lago answers them
(``{"customer": {...}}``, ``{"events": [...], "meta": {...}}``, Lago's error bodies), so the
real client runs against it. State lives in memory in a :class:`LagoState` (tests read it).

Like Lago with its Postgres event store, a second event with the same ``transaction_id`` is
refused with 422 ``{"error_details": {"transaction_id": ["value_already_exist"]}}`` and not
counted again. Not served: invoices, plans, wallets, coupons, batch events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_401_UNAUTHORIZED, HTTP_404_NOT_FOUND, HTTP_422_UNPROCESSABLE_ENTITY


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class LagoState:
    api_key: str = "lago-test-key"
    # None: any plan code is accepted; otherwise an unknown one is 404 plan_not_found.
    plans: set[str] | None = None
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external_id
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)  # by external_id
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # by transaction_id
    event_posts: int = 0  # every POST /events, refused duplicates included

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


def create_lago_app(state: LagoState, prefix: str = "") -> Litestar:
    """The app; ``prefix`` mounts the API under a path (``{prefix}/api/v1/...``)."""
    api = Router(
        path=f"{prefix}/api/v1",
        route_handlers=[
            create_customer, list_customers, find_customer,
            create_subscription, list_subscriptions, find_subscription,
            create_event, list_events, find_event,
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
