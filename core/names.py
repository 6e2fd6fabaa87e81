"""Names on the wire: task queues, search-attribute keys and workflow ids.

The search attributes are registered on the dev cluster by ``temporal-dev.yaml`` and in test
environments from the same file; a test keeps the two in step. Renaming any of these breaks
running workflows and saved visibility queries.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

# Task queues (DESIGN.md "Names on the wire").
WORKFLOWS_QUEUE = "biz-workflows"  # workflows and light activities (Postgres, audit)
AGENTS_QUEUE = "biz-agents"  # LLM / crew activities: small concurrency, long timeouts
INTEGRATIONS_QUEUE = "biz-integrations"  # Stripe, Lago, MCP tools: rate limited
TASK_QUEUES = (WORKFLOWS_QUEUE, AGENTS_QUEUE, INTEGRATIONS_QUEUE)

# Search attributes. No personal data here: they are not encrypted.
TENANT_ID = SearchAttributeKey.for_keyword("BizTenantId")
CAPABILITY = SearchAttributeKey.for_keyword("BizCapability")
PENDING_APPROVAL = SearchAttributeKey.for_bool("BizPendingApproval")
APPROVAL_AUDIENCE = SearchAttributeKey.for_keyword("BizApprovalAudience")
APPROVAL_ROLE = SearchAttributeKey.for_keyword("BizApprovalRole")
APPROVAL_DUE_AT = SearchAttributeKey.for_datetime("BizApprovalDueAt")
SEARCH_ATTRIBUTES = (
    TENANT_ID,
    CAPABILITY,
    PENDING_APPROVAL,
    APPROVAL_AUDIENCE,
    APPROVAL_ROLE,
    APPROVAL_DUE_AT,
)

# The query every capability's workflow answers with its progress (stage, steps, ...). Read by
# name, not by reference: the API reads it from any workflow, whatever its class.
PROGRESS_QUERY = "progress"
# Workflow control (workflows/stages.py): every capability's workflow takes these signals and
# answers this query, whatever its class.
PAUSE_SIGNAL = "pause"
RESUME_SIGNAL = "resume"
CONTROL_QUERY = "control"

# A tenant id or business key: lower-case slug, no ':' (the id separator).
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"

# A web address the platform fetches or links to: http(s), a host name (labels of letters,
# digits and hyphens, any script: IDNA), an IPv4 address or a bracketed IPv6 one, an optional
# port, then a path, query or fragment without spaces or control characters. No user:password@.
_HOST_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
WEB_URL_PATTERN = (r"^https?://(?:\[[0-9A-Fa-f:.]+\]|(?:" + _HOST_LABEL + r"\.)*" + _HOST_LABEL + r"\.?)"
                   r"(?::\d{1,5})?(?:[/?#][^\s\x00-\x1f\x7f]*)?$")
# The "tenant" of platform-wide runs, schedules and reports (the Tenant Health Guardian, global
# schedules): never a real tenant, so no tenant may be created with this id.
PLATFORM_TENANT = "global"
# A new tenant's id: a slug, and not the platform's.
NEW_TENANT_PATTERN = r"^(?!global$)[a-z0-9][a-z0-9-]{1,62}$"


def workflow_id(tenant_id: str, capability: str, business_key: str) -> str:
    """``{tenant_id}:{capability}:{business_key}``: a retry or a duplicate finds the same one."""
    return f"{tenant_id}:{capability}:{business_key}"


def tenant_of(workflow_id_: str) -> str:
    return workflow_id_.split(":", 1)[0]
