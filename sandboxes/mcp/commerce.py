"""Commerce tools: stock levels from the tenant's order settings (``inventory`` and
``out_of_stock_skus`` of workflows/orders.py ``OrderSettings``; recording nothing) and shipping
labels (recorded in the outbox)."""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
from mcp.server.fastmcp import FastMCP
from pydantic import Field
from typing_extensions import TypedDict

from activities.tenants import tenant_settings
from sandboxes.mcp.common import IdempotencyKey, TenantId, ToolContext, WorkflowId, derive_id
from workflows.orders import CAPABILITY as ORDER


SANDBOX_DEFAULT_STOCK = 1000


class StockLevel(TypedDict):
    sku: str
    available: int
    in_stock: bool


class InventoryResult(TypedDict):
    items: list[StockLevel]
    sandbox: bool


class ShippingLabelResult(TypedDict):
    label_id: str
    tracking_number: str
    carrier: str
    service: str
    label_url: str
    status: str
    sandbox: bool


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the commerce tools to the sandbox server."""
    outbox, pools = ctx.outbox, ctx.pools

    @mcp.tool(
        name="check_inventory",
        description=(
            "Stock levels of SKUs in the store's inventory. Sandbox stock comes from the tenant's order "
            "settings: `inventory` ({sku: quantity}) and `out_of_stock_skus`; other SKUs have "
            f"{SANDBOX_DEFAULT_STOCK} available. Records nothing."
        ),
        structured_output=True,
    )
    async def check_inventory(
        tenant_id: TenantId,
        skus: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(min_length=1, max_length=500)],
        idempotency_key: Annotated[str | None, Field(max_length=400)] = None,
        workflow_id: WorkflowId = None,
    ) -> InventoryResult:
        pool = await pools.get()
        settings = await tenant_settings(pool, tenant_id, ORDER.name, ORDER.settings)
        stock, out = settings.inventory, set(settings.out_of_stock_skus)
        items = []
        for sku in dict.fromkeys(skus):
            available = 0 if sku in out else int(stock.get(sku, SANDBOX_DEFAULT_STOCK))
            items.append(StockLevel(sku=sku, available=available, in_stock=available > 0))
        return InventoryResult(items=items, sandbox=True)

    @mcp.tool(
        name="create_shipping_label",
        description="Buy a shipping label for an order (recorded in the outbox); answers the tracking number.",
        structured_output=True,
    )
    async def create_shipping_label(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        order_key: Annotated[str, Field(min_length=1, max_length=100)],
        ship_to_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")],
        parcels: Annotated[int, Field(ge=1, le=50)] = 1,
        carrier: Literal["usps", "ups", "fedex", "dhl"] = "usps",
        service: Annotated[str, Field(min_length=1, max_length=40)] = "ground",
        workflow_id: WorkflowId = None,
    ) -> ShippingLabelResult:
        args = dict(order_key=order_key, ship_to_country=ship_to_country, parcels=parcels, carrier=carrier,
                    service=service)

        async def respond(conn: asyncpg.Connection) -> ShippingLabelResult:
            label = derive_id("label", idempotency_key)
            return ShippingLabelResult(
                label_id=f"lbl_{label}", tracking_number=f"1Z{derive_id('tracking', idempotency_key, length=16).upper()}",
                carrier=carrier, service=service, label_url=f"https://labels.sandbox.invalid/{label}.pdf",
                status="purchased", sandbox=True,
            )

        return await outbox.record(tool="create_shipping_label", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)
