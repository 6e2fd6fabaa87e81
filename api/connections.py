"""A tenant's connections to its own outside services; today its WordPress site.

- ``PUT /v1/tenants/{t}/connections/wordpress``: connect the site (its address, a user and an
  application password made in WordPress under Users → Profile → Application Passwords), or
  replace the connection. The WordPress tools then act on that site for the tenant.
- ``GET /v1/tenants/{t}/connections/wordpress``: the site and user, and whether an application
  password is kept (``has_application_password``), never the password itself.
- ``DELETE /v1/tenants/{t}/connections/wordpress``: forget it (the tools refuse until a new one).

Who: the tenant's own client and partner, and platform admins, change it; everyone who sees the
tenant reads it; another tenant's caller gets 404. A bad field answers 400 naming it. The site's
address goes through the SSRF guard (activities/netguard.py, the ``BIZ_FETCH_*`` policy the MCP
server fetches with): http(s), no credentials, no literal address the policy refuses.

The routes write the ``tenant_wordpress`` row themselves, in one transaction with the audit
entry, rather than through a workflow, like the webhook endpoints (api/outbound.py) and the MCP
registry (api/mcp.py): a connection is the tenant's configuration, nothing outside Postgres
changes (the tools read it at every call), and a workflow's input would keep the application
password in Temporal history for the retention period. The password is never logged, audited
or answered.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import httpx
import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter

from activities import netguard
from api.audit import write_entry
from api.auth import ADMIN_ROLES, ROLES, Principal
from api.errors import invalid
from core.names import SLUG_PATTERN, WEB_URL_PATTERN

READ_ROLES = frozenset(ROLES)
WRITE_ROLES = ADMIN_ROLES | {"partner", "client"}
_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class WordPressConnectionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    site_url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=WEB_URL_PATTERN,
                                          description="The site's address, e.g. https://blog.example.com")]
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_PRINTABLE,
                                          description="The WordPress user the posts are written as")]
    application_password: Annotated[str, msgspec.Meta(
        min_length=24, max_length=60, pattern=r"^[A-Za-z0-9 ]+$",
        description="An application password of that user (24 letters and digits; the spaces WordPress shows "
                    "may stay). Kept for the tools; never shown again.")]


class WordPressConnection(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    connected: bool
    site_url: str | None = None
    username: str | None = None
    has_application_password: bool = False
    updated_by: str | None = None
    updated_at: datetime | None = None


def _in_scope(principal: Principal, tenant_id: str) -> None:
    if not principal.can_see_tenant(tenant_id):
        raise NotFoundException(f"tenant {tenant_id!r} not found")


def site_address(url: str, policy: netguard.FetchPolicy) -> str:
    """The site's address as the tools use it (no trailing slash), or :class:`netguard.URLRefused`."""
    target = netguard.check_url(url)
    if target.url.query or target.url.fragment:
        raise netguard.URLRefused(netguard.HOST, "the site's address has no query or fragment")
    if target.literal is not None:
        netguard.check_address(target.literal, target.port, policy)
    return str(target.url.copy_with(query=None, fragment=None)).rstrip("/")


def _view(tenant_id: str, row: asyncpg.Record | None) -> WordPressConnection:
    if row is None:
        return WordPressConnection(tenant_id=tenant_id, connected=False)
    return WordPressConnection(tenant_id=tenant_id, connected=True, site_url=row["site_url"], username=row["username"],
                               has_application_password=bool(row["has_password"]), updated_by=row["updated_by"],
                               updated_at=row["updated_at"])


async def _audit(conn: asyncpg.Connection, principal: Principal, tenant_id: str, action: str,
                 details: dict[str, Any]) -> None:
    await write_entry(conn, subject=f"connection:wordpress:{tenant_id}:{action}", tenant_id=tenant_id,
                      actor=principal, action=f"connection.wordpress_{action}", details=details)


_COLUMNS = "site_url, username, application_password <> '' AS has_password, updated_by, updated_at"


class ConnectionsController(Controller):
    path = "/v1/tenants/{tenant_id:str}/connections"
    tags = ["connections"]

    @get("/wordpress", operation_id="get_wordpress_connection", summary="A tenant's WordPress site",
         description="The connected site and user, and whether an application password is kept (never the "
                     "password). `connected` false when none. Other tenants' callers get 404.",
         opt={"roles": READ_ROLES}, raises=[NotFoundException])
    async def read(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                   tenant_id: _TENANT_ID) -> WordPressConnection:
        _in_scope(request.user, tenant_id)
        async with db.acquire() as conn:
            if not await conn.fetchval("SELECT true FROM tenants WHERE id = $1", tenant_id):
                raise NotFoundException(f"tenant {tenant_id!r} not found")
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tenant_wordpress WHERE tenant_id = $1",  # noqa: S608
                                      tenant_id)
        return _view(tenant_id, row)

    @put("/wordpress", operation_id="put_wordpress_connection", summary="Connect a tenant's WordPress site",
         description=(
             "The WordPress tools (create, update, schedule and publish posts; list categories and tags) act on "
             "this site for the tenant, over the WordPress REST API with the user's application password. "
             "Replaces an earlier connection. The tenant's client and partner, and platform admins. The address "
             "must be http(s), without credentials, and allowed by the network policy. Audited (without the "
             "password)."),
         opt={"roles": WRITE_ROLES}, raises=[NotFoundException])
    async def connect(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                      tenant_id: _TENANT_ID, data: JSONBody[WordPressConnectionBody]) -> WordPressConnection:
        principal: Principal = request.user
        _in_scope(principal, tenant_id)
        fetch = request.app.state.settings.fetch
        policy = netguard.FetchPolicy.from_settings(fetch.allow_private_networks, fetch.allowed_networks,
                                                    fetch.public_ports)
        try:
            site = site_address(data.site_url, policy)
        except netguard.URLRefused as exc:
            raise invalid("site_url", exc.message, "body") from None
        except (httpx.InvalidURL, ValueError) as exc:
            raise invalid("site_url", f"not a valid URL: {exc}", "body") from None
        if len(site) > 2000:
            raise invalid("site_url", "longer than 2000 characters once encoded", "body")
        password = re.sub(r"\s", "", data.application_password)
        if len(password) != 24:
            raise invalid("application_password", "a WordPress application password is 24 letters and digits "
                          "(make one under Users → Profile → Application Passwords)", "body")
        async with db.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT true FROM tenants WHERE id = $1", tenant_id):
                raise NotFoundException(f"tenant {tenant_id!r} not found")
            row = await conn.fetchrow(
                f"""INSERT INTO tenant_wordpress (tenant_id, site_url, username, application_password, updated_by)
                    VALUES ($1, $2, $3, $4, $5)
                    ON CONFLICT (tenant_id) DO UPDATE
                    SET site_url = $2, username = $3, application_password = $4, updated_by = $5, updated_at = now()
                    RETURNING {_COLUMNS}""",  # noqa: S608
                tenant_id, site, data.username, password, principal.sub)
            await _audit(conn, principal, tenant_id, "connected", {"site_url": site, "username": data.username})
        return _view(tenant_id, row)

    @delete("/wordpress", operation_id="delete_wordpress_connection", summary="Disconnect a tenant's WordPress site",
            description="The WordPress tools refuse for the tenant until a site is connected again; its posts "
                        "stay on the site. Audited.", opt={"roles": WRITE_ROLES}, raises=[NotFoundException])
    async def disconnect(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                         tenant_id: _TENANT_ID) -> None:
        _in_scope(request.user, tenant_id)
        async with db.acquire() as conn, conn.transaction():
            site = await conn.fetchval("DELETE FROM tenant_wordpress WHERE tenant_id = $1 RETURNING site_url", tenant_id)
            if site is None:
                raise NotFoundException(f"tenant {tenant_id!r} has no WordPress site connected")
            await _audit(conn, request.user, tenant_id, "disconnected", {"site_url": site})
