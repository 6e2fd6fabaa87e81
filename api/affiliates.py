"""Affiliates: who is paid a commission on the tenants they referred (admin portal).

- ``GET /v1/admin/affiliates``: every affiliate, with how many tenants it referred.
- ``GET /v1/admin/affiliates/{id}``: one, with its referred tenants and its latest payouts.
- ``PUT /v1/admin/affiliates/{id}``: create or change one (name, email, commission, the Stripe
  connected account its payouts go to, active or paused). An affiliate is paused, never deleted:
  its payouts stay in the ledger.
- ``PUT /v1/admin/affiliates/{id}/referrals/{tenant}``: the tenant was referred by this affiliate
  (from ``referred_at``, default now; invoices issued before earn nothing). A tenant referred by
  another affiliate moves to this one.
- ``DELETE /v1/admin/affiliates/{id}/referrals/{tenant}``: no longer referred; what it paid
  from now on earns nothing (payouts made stay).

Who: platform admins and finance (``super_admin``, ``admin``, ``finance``); everyone else 403.
The routes write the rows themselves, each change in one transaction with its audit entry
(tenant ``global``, or the referred tenant), as the other configuration routes do. The
quarterly Affiliate Payout Review (workflows/affiliate_payout.py) reads them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter

from activities.stripe import CONNECTED_ACCOUNT_PATTERN
from api.audit import write_entry
from api.auth import ADMIN_ROLES, Principal
from core.names import EMAIL_PATTERN, NOT_BLANK_PATTERN, PLATFORM_TENANT, SLUG_PATTERN
from workflows.affiliate_payout import percent_text

ROLES = ADMIN_ROLES | {"finance"}
_AFFILIATE_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN, description="The affiliate's id (a slug)")]
_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
LATEST_PAYOUTS = 20
PERCENT_PATTERN = r"^(100(\.00?)?|[0-9]{1,2}(\.[0-9]{1,2})?)$"


class AffiliateBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK_PATTERN)]
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=EMAIL_PATTERN,
                                       description="Where the affiliate hears about its payouts")]
    commission_percent: Annotated[str, msgspec.Meta(
        pattern=PERCENT_PATTERN, examples=["10", "12.5"],
        description="Share of each referred tenant's paid invoice (before taxes), in percent from 0 to 100 with "
                    "at most two decimals, written as a decimal string (exact, as money is)")]
    payout_account: Annotated[str, msgspec.Meta(
        pattern=CONNECTED_ACCOUNT_PATTERN,
        description="The Stripe connected account (acct_...) payouts are transferred to; none: held")] | None = None
    status: Literal["active", "paused"] = "active"


class ReferralBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    referred_at: Annotated[datetime, msgspec.Meta(
        tz=True, description="From when the tenant's invoices earn the commission; default now")] | None = None


class AffiliateView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    email: str
    commission_percent: str  # a decimal string, e.g. "12.5"
    payout_account: str | None
    status: str
    referred_tenants: int
    updated_by: str
    updated_at: datetime


class ReferralView(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    affiliate_id: str
    referred_at: datetime
    updated_by: str


class PayoutView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    workflow_id: str
    currency: str
    amount_cents: int
    status: str
    transfer_id: str | None
    approved_by: str
    invoices: int
    created_at: datetime
    paid_at: datetime | None


class AffiliateDetail(msgspec.Struct, frozen=True, kw_only=True):
    affiliate: AffiliateView
    referrals: list[ReferralView]
    payouts: list[PayoutView]  # the latest first


_SELECT = """SELECT a.id, a.name, a.email, a.commission_percent, a.payout_account, a.status, a.updated_by,
                    a.updated_at, (SELECT count(*) FROM affiliate_referrals r WHERE r.affiliate_id = a.id) AS referred
             FROM affiliates a"""


def _view(row: asyncpg.Record) -> AffiliateView:
    return AffiliateView(id=row["id"], name=row["name"], email=row["email"],
                         commission_percent=percent_text(row["commission_percent"]),
                         payout_account=row["payout_account"], status=row["status"], referred_tenants=row["referred"],
                         updated_by=row["updated_by"], updated_at=row["updated_at"])


def _referral(row: asyncpg.Record) -> ReferralView:
    return ReferralView(tenant_id=row["tenant_id"], affiliate_id=row["affiliate_id"], referred_at=row["referred_at"],
                        updated_by=row["updated_by"])


async def _audit(conn: asyncpg.Connection, principal: Principal, subject: str, action: str, details: dict[str, Any],
                 tenant_id: str = PLATFORM_TENANT) -> None:
    await write_entry(conn, subject=f"affiliate:{subject}", tenant_id=tenant_id, actor=principal,
                      action=f"affiliate.{action}", details=details)


async def _affiliate(conn: asyncpg.Connection, affiliate_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(f"{_SELECT} WHERE a.id = $1", affiliate_id)  # noqa: S608
    if row is None:
        raise NotFoundException(f"affiliate {affiliate_id!r} not found")
    return row


class AffiliatesController(Controller):
    path = "/v1/admin/affiliates"
    tags = ["affiliates"]
    opt = {"roles": ROLES}

    @get("/", operation_id="list_affiliates", summary="Affiliates",
         description="Every affiliate (by id), with how many tenants it referred. Admins and finance.")
    async def list_all(self, db: NamedDependency[asyncpg.Pool]) -> list[AffiliateView]:
        return [_view(r) for r in await db.fetch(f"{_SELECT} ORDER BY a.id")]  # noqa: S608

    @get("/{affiliate_id:str}", operation_id="get_affiliate", summary="One affiliate",
         description=f"The affiliate, the tenants it referred and its latest {LATEST_PAYOUTS} payouts.",
         raises=[NotFoundException])
    async def read(self, db: NamedDependency[asyncpg.Pool], affiliate_id: _AFFILIATE_ID) -> AffiliateDetail:
        async with db.acquire() as conn:
            row = await _affiliate(conn, affiliate_id)
            referrals = await conn.fetch("SELECT * FROM affiliate_referrals WHERE affiliate_id = $1 ORDER BY tenant_id",
                                         affiliate_id)
            payouts = await conn.fetch(
                """SELECT p.*, (SELECT count(*) FROM affiliate_commissions c WHERE c.payout_id = p.id) AS invoices
                   FROM affiliate_payouts p WHERE affiliate_id = $1 ORDER BY id DESC LIMIT $2""",
                affiliate_id, LATEST_PAYOUTS)
        return AffiliateDetail(affiliate=_view(row), referrals=[_referral(r) for r in referrals], payouts=[
            PayoutView(id=p["id"], workflow_id=p["workflow_id"], currency=p["currency"], amount_cents=p["amount_cents"],
                       status=p["status"], transfer_id=p["transfer_id"], approved_by=p["approved_by"],
                       invoices=p["invoices"], created_at=p["created_at"], paid_at=p["paid_at"]) for p in payouts])

    @put("/{affiliate_id:str}", operation_id="put_affiliate", summary="Create or change an affiliate",
         description="Name, email, commission (percent of each referred tenant's paid invoice before taxes), the "
                     "Stripe connected account payouts go to (none: held) and status (a paused affiliate's payouts "
                     "are held). Changes apply from the next payout review. Audited.")
    async def save(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                  affiliate_id: _AFFILIATE_ID, data: JSONBody[AffiliateBody]) -> AffiliateView:
        percent = Decimal(data.commission_percent)
        async with db.acquire() as conn, conn.transaction():
            before = await conn.fetchrow("SELECT * FROM affiliates WHERE id = $1 FOR UPDATE", affiliate_id)
            await conn.execute(
                """INSERT INTO affiliates (id, name, email, commission_percent, payout_account, status, updated_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (id) DO UPDATE SET name = $2, email = $3, commission_percent = $4, payout_account = $5,
                       status = $6, updated_by = $7, updated_at = now()""",
                affiliate_id, data.name, data.email, percent, data.payout_account, data.status, request.user.sub)
            details: dict[str, Any] = {"commission_percent": percent_text(percent), "status": data.status,
                                       "payout_account": data.payout_account}
            if before is not None:
                details["before"] = {"commission_percent": percent_text(before["commission_percent"]),
                                     "status": before["status"], "payout_account": before["payout_account"]}
            await _audit(conn, request.user, affiliate_id, "created" if before is None else "changed", details)
            return _view(await _affiliate(conn, affiliate_id))

    @put("/{affiliate_id:str}/referrals/{tenant_id:str}", operation_id="put_affiliate_referral",
         summary="Record that an affiliate referred a tenant",
         description="From `referred_at` (default now) the tenant's paid invoices earn the affiliate its commission. "
                     "A tenant referred by another affiliate moves to this one. Audited.",
         raises=[NotFoundException])
    async def refer(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                    affiliate_id: _AFFILIATE_ID, tenant_id: _TENANT_ID,
                    data: JSONBody[ReferralBody]) -> ReferralView:
        referred_at = data.referred_at
        async with db.acquire() as conn, conn.transaction():
            await _affiliate(conn, affiliate_id)
            if not await conn.fetchval("SELECT true FROM tenants WHERE id = $1", tenant_id):
                raise NotFoundException(f"tenant {tenant_id!r} not found")
            before = await conn.fetchval("SELECT affiliate_id FROM affiliate_referrals WHERE tenant_id = $1 FOR UPDATE",
                                         tenant_id)
            row = await conn.fetchrow(
                """INSERT INTO affiliate_referrals (tenant_id, affiliate_id, referred_at, updated_by)
                   VALUES ($1, $2, coalesce($3, now()), $4)
                   ON CONFLICT (tenant_id) DO UPDATE SET affiliate_id = $2, referred_at = coalesce($3, now()),
                       updated_by = $4, updated_at = now()
                   RETURNING *""", tenant_id, affiliate_id, referred_at, request.user.sub)
            await _audit(conn, request.user, f"{affiliate_id}:{tenant_id}", "referral_set",
                         {"affiliate_id": affiliate_id, "referred_at": row["referred_at"].isoformat(),
                          "previous_affiliate_id": before}, tenant_id=tenant_id)
        return _referral(row)

    @delete("/{affiliate_id:str}/referrals/{tenant_id:str}", operation_id="delete_affiliate_referral",
            summary="A tenant is no longer an affiliate's referral",
            description="Its invoices earn the affiliate nothing from the next payout review; payouts made stay. "
                        "Audited.", raises=[NotFoundException])
    async def unrefer(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                      affiliate_id: _AFFILIATE_ID, tenant_id: _TENANT_ID) -> None:
        async with db.acquire() as conn, conn.transaction():
            gone = await conn.fetchval(
                "DELETE FROM affiliate_referrals WHERE tenant_id = $1 AND affiliate_id = $2 RETURNING tenant_id",
                tenant_id, affiliate_id)
            if gone is None:
                raise NotFoundException(f"tenant {tenant_id!r} is not a referral of affiliate {affiliate_id!r}")
            await _audit(conn, request.user, f"{affiliate_id}:{tenant_id}", "referral_removed",
                         {"affiliate_id": affiliate_id}, tenant_id=tenant_id)
