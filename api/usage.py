"""GET /v1/usage: LLM usage and cost over a period, aggregated by any of tenant, capability, agent
and model (the ``llm_usage`` rows every LLM call leaves, offline calls included at zero cost).

The capability of a call is the one of the workflow that made it (the middle part of its id,
``{tenant}:{capability}:{key}``); calls without a workflow group under capability null. Groups
are paged in the order of their keys; ``totals`` covers the whole selection, every page.
Clients see their tenant's usage, partners the tenants they manage, platform staff every
tenant's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, Router, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from api.errors import invalid
from api.auth import Principal
from api.paging import (DEFAULT_LIMIT, NAME_PATTERN, Cursor, Limit, Since, Tenant, Until, Where, decode_cursor,
                        encode_cursor, listing, period, tenant_scope)
from core.names import SLUG_PATTERN

Dimension = Literal["tenant", "capability", "agent", "model"]
DEFAULT_PERIOD = timedelta(days=30)
LONGEST_PERIOD = timedelta(days=366)
# Each dimension's SQL, never null (so groups order and page on plain text).
_SQL: dict[str, str] = {"tenant": "tenant_id", "capability": "coalesce(split_part(workflow_id, ':', 2), '')",
                        "agent": "agent", "model": "model"}


class UsageGroup(msgspec.Struct, frozen=True, kw_only=True):
    # The group's key: only the dimensions asked for in group_by are set.
    tenant_id: str | None = None
    capability: str | None = None
    agent: str | None = None
    model: str | None = None
    calls: int
    offline_calls: int  # made by the offline provider: no cost, not real content
    tokens_in: int
    tokens_out: int
    cost_usd: str  # a decimal amount in USD, to the micro-dollar (e.g. "0.012500")


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True):
    calls: int
    offline_calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: str


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime
    group_by: list[Dimension]
    groups: list[UsageGroup]
    totals: UsageTotals  # of the whole selection, not only this page
    next_cursor: str | None = None  # pass as ?cursor= (with the same filters) for the next groups


def _money(value: Decimal | None) -> str:
    return f"{(value or Decimal(0)):.6f}"


_SUMS = """count(*) AS calls, count(*) FILTER (WHERE offline) AS offline_calls,
           coalesce(sum(tokens_in), 0)::bigint AS tokens_in, coalesce(sum(tokens_out), 0)::bigint AS tokens_out,
           coalesce(sum(cost_usd), 0) AS cost_usd"""


class UsageController(Controller):
    path = "/v1/usage"
    tags = ["usage"]

    @get("/", operation_id="get_usage", summary="LLM usage and cost over a period, grouped",
         description="`group_by` any of tenant, capability, agent, model (repeat the parameter; default: tenant); "
                     "filters `tenant_id`, `capability`, `agent`, `model`; the period `since`/`until` (default: "
                     "the last 30 days; at most 366 days). Costs are decimal strings in USD.",
         raises=[NotFoundException])
    async def get_usage(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                        cursor_key: NamedDependency[bytes], tenant_id: Tenant = None,
                        group_by: Annotated[list[Dimension] | None, Parameter(
                            description="Dimensions to group by, in this order")] = None,
                        capability: Annotated[str | None, Parameter(pattern=SLUG_PATTERN,
                                                                    description="Only this capability")] = None,
                        agent: Annotated[str | None, Parameter(pattern=NAME_PATTERN, description="Only this agent")] = None,
                        model: Annotated[str | None, Parameter(pattern=NAME_PATTERN, description="Only this model")] = None,
                        since: Since = None, until: Until = None,
                        limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> UsageReport:
        dims: list[Dimension] = list(dict.fromkeys(group_by or ["tenant"]))
        tenants = tenant_scope(request.user, tenant_id)
        name = listing("usage", request.user, tenants, group_by=",".join(dims), capability=capability, agent=agent,
                       model=model, since=since, until=until)
        # A cursor carries the period of its first page (the default period moves with the clock)
        # and the last group's key.
        after = decode_cursor(cursor, cursor_key, name)
        if after is not None:
            if len(after) != len(dims) + 2 or not all(isinstance(v, str) for v in after):
                raise invalid("cursor", "not a cursor of this listing: pass the previous page's next_cursor")
            start, end = datetime.fromisoformat(after[0]), datetime.fromisoformat(after[1])
            after = after[2:]
        else:
            start, end = period(since, until, default=DEFAULT_PERIOD, longest=LONGEST_PERIOD)
        zero = UsageTotals(calls=0, offline_calls=0, tokens_in=0, tokens_out=0, cost_usd=_money(None))
        if tenants == []:
            return UsageReport(since=start, until=end, group_by=dims, groups=[], totals=zero)
        where = Where()
        where.add("tenant_id = ANY({})", tenants)
        where.add("split_part(workflow_id, ':', 2) = {}", capability)
        where.add("agent = {}", agent)
        where.add("model = {}", model)
        where.add("created_at >= {}", start)
        where.add("created_at < {}", end)
        totals_row = await db.fetchrow(f"SELECT {_SUMS} FROM llm_usage {where.sql()}", *where.args)  # noqa: S608

        keys = [_SQL[d] for d in dims]
        collated = [f'{k} COLLATE "C"' for k in keys]  # byte order: the same on every server
        having = ""
        if after is not None:
            # Row comparison: the groups after the previous page's last one, in key order.
            bound = [where.bind(v) + ' COLLATE "C"' for v in after]
            having = f"HAVING ({', '.join(collated)}) > ({', '.join(bound)})"
        rows = await db.fetch(
            f"""SELECT {", ".join(f"{k} AS k{i}" for i, k in enumerate(keys))}, {_SUMS}
                FROM llm_usage {where.sql()} GROUP BY {", ".join(keys)} {having}
                ORDER BY {", ".join(collated)} LIMIT {where.bind(limit + 1)}""",  # noqa: S608 - constants; values bound
            *where.args)
        groups = []
        for r in rows[:limit]:
            key = {d: r[f"k{i}"] for i, d in enumerate(dims)}
            groups.append(UsageGroup(
                tenant_id=key.get("tenant"), capability=key.get("capability") or None, agent=key.get("agent"),
                model=key.get("model"), calls=r["calls"], offline_calls=r["offline_calls"], tokens_in=r["tokens_in"],
                tokens_out=r["tokens_out"], cost_usd=_money(r["cost_usd"])))
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor([start.isoformat(), end.isoformat(), *(last[f"k{i}"] for i in range(len(keys)))],
                                        cursor_key, name)
        totals = UsageTotals(calls=totals_row["calls"], offline_calls=totals_row["offline_calls"],
                             tokens_in=totals_row["tokens_in"], tokens_out=totals_row["tokens_out"],
                             cost_usd=_money(totals_row["cost_usd"]))
        return UsageReport(since=start, until=end, group_by=dims, groups=groups, totals=totals,
                           next_cursor=next_cursor)


def usage_router() -> Router:
    return Router(path="/", route_handlers=[UsageController])
