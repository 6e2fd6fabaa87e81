"""The catalogue: every capability the API can start, with its input type and workflow id.

The API builds one typed, documented start route per entry; the worker registers every
workflow listed here. Adding a capability is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from temporalio.common import WorkflowIDReusePolicy

from workflows.campaign import CampaignInput, CampaignWorkflow
from workflows.dunning import DunningInput, DunningWorkflow
from workflows.onboarding import OnboardingInput, OnboardingWorkflow
from workflows.orders import OrderInput, OrderProcessingWorkflow
from workflows.presence_audit import PresenceAuditInput, PresenceAuditWorkflow
from workflows.seo_health import SeoHealthInput, SeoHealthWorkflow
from workflows.tenant_health import PLATFORM_TENANT, TenantHealthInput, TenantHealthWorkflow


@dataclass(frozen=True)
class Capability:
    name: str
    workflow: type
    input_type: type
    # The business key of the workflow id `{tenant}:{capability}:{key}`.
    business_key: Callable[[Any], str]
    # Roles that may start it; the input's tenant, when the input names one.
    start_roles: frozenset[str]
    tenant_in_input: Callable[[Any], str] | None = None
    summary: str = ""
    # Roles that may cancel a run (in their tenant scope). Workflows holding money or promises
    # compensate when canceled (an order releases its payment).
    cancel_roles: frozenset[str] = frozenset({"super_admin", "admin"})
    # A business key runs once: a closed workflow's id is not started again (409 / duplicate).
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.REJECT_DUPLICATE

    @property
    def run(self) -> Callable[..., Any]:
        return self.workflow.run  # type: ignore[attr-defined]


def _host_key(url: str) -> str:
    """A URL's host as a slug."""
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return "".join(c if c.isalnum() else "-" for c in host).strip("-")[:63] or "site"


CATALOGUE: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability(
            name="onboarding",
            workflow=OnboardingWorkflow,
            input_type=OnboardingInput,
            business_key=lambda inp: inp.tenant_id,
            tenant_in_input=lambda inp: inp.tenant_id,
            start_roles=frozenset({"super_admin", "admin"}),
            summary="Onboard a tenant: create and activate it, record the audit entry.",
        ),
        Capability(
            name="presence-audit",
            workflow=PresenceAuditWorkflow,
            input_type=PresenceAuditInput,
            # One audit per site and day unless the caller names a key (runs in the API only).
            business_key=lambda inp: inp.audit_key or f"{_host_key(inp.website_url)}-{date.today():%Y%m%d}",
            tenant_in_input=lambda inp: inp.tenant_id,
            start_roles=frozenset({"super_admin", "admin", "partner", "client"}),
            cancel_roles=frozenset({"super_admin", "admin", "partner", "client"}),
            summary="Audit a website and its social presence with a 4-agent crew; stores a typed report.",
        ),
        Capability(
            name="seo-health",
            workflow=SeoHealthWorkflow,
            input_type=SeoHealthInput,
            # One run per site and day unless the caller names a key (schedules: weekly-{time}).
            business_key=lambda inp: inp.key or f"{_host_key(inp.website_url)}-{date.today():%Y%m%d}",
            tenant_in_input=lambda inp: inp.tenant_id,
            start_roles=frozenset({"super_admin", "admin", "partner", "client"}),
            cancel_roles=frozenset({"super_admin", "admin", "partner", "client"}),
            summary="SEO Health Monitor: fetch the site, scan it technically, an agent analyses it; stores a report "
                    "with the shift since the last run (score delta, issues new and resolved, pages changed).",
        ),
        Capability(
            name="campaign",
            workflow=CampaignWorkflow,
            input_type=CampaignInput,
            business_key=lambda inp: inp.campaign_key,
            tenant_in_input=lambda inp: inp.tenant_id,
            start_roles=frozenset({"super_admin", "admin", "partner", "client"}),
            cancel_roles=frozenset({"super_admin", "admin", "partner", "client"}),
            summary="Plan and write a multi-channel ad campaign with AI; the client approves creative and budget "
                    "(Pending Actions), a budget above the tenant's cap also needs an admin; then it launches.",
        ),
        Capability(
            name="order",
            workflow=OrderProcessingWorkflow,
            input_type=OrderInput,
            business_key=lambda inp: inp.order_key,
            tenant_in_input=lambda inp: inp.tenant_id,
            start_roles=frozenset({"super_admin", "admin"}),
            # The merchant may cancel its order; the payment is released (canceled or refunded).
            cancel_roles=frozenset({"super_admin", "admin", "client"}),
            summary="Process an order: validate, check stock, score fraud by rules; above the tenant's threshold "
                    "the client approves (Pending Actions). Usually started by the Shopify orders/create webhook.",
        ),
        Capability(
            name="dunning",
            workflow=DunningWorkflow,
            input_type=DunningInput,
            business_key=lambda inp: inp.invoice_key,
            tenant_in_input=lambda inp: inp.tenant_id,
            start_roles=frozenset({"super_admin", "admin", "finance"}),
            # Never the dunned client: only platform staff stop collecting a debt.
            cancel_roles=frozenset({"super_admin", "admin", "finance"}),
            summary="Dunning of a failed invoice: Stripe retries at day 1, 3 and 7, the customer emailed each time, "
                    "then an admin retries, writes off or suspends the tenant; invoice.paid ends it. Usually started "
                    "by the Stripe invoice.payment_failed webhook.",
        ),
        Capability(
            name="tenant-health",
            workflow=TenantHealthWorkflow,
            input_type=TenantHealthInput,
            business_key=lambda inp: inp.key or f"{date.today():%Y%m%d}",
            tenant_in_input=lambda inp: PLATFORM_TENANT,
            start_roles=frozenset({"super_admin", "admin"}),
            summary="Tenant Health Guardian: score every tenant (or the named ones) from its last hours: approvals "
                    "timed out or escalated, failed orders and webhook deliveries, AI spend against budget; stores "
                    "a report with the tenants newly at risk and those recovered. Daily, and on demand.",
        ),
    )
}

WORKFLOWS: list[type] = [c.workflow for c in CATALOGUE.values()]
