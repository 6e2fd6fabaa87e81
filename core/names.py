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

# The largest row id a route takes (ids are bigserial): the largest integer a JSON number, a
# double, states exactly, so the OpenAPI document says the same bound the API checks; no table
# here counts that far.
MAX_ROW_ID = 2**53 - 1

# A tenant id or business key: lower-case slug, no ':' (the id separator).
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"

# Control characters and every character either regular expression dialect calls a space (Python's
# \s and ECMAScript's, which the OpenAPI document's patterns are read as, differ), spelled out so
# a pattern means the same to the API and to a client generating values from the document.
_SPACES = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# A web address the platform fetches or links to: http(s), a host name (labels of letters,
# digits and hyphens, any script: IDNA), an IPv4 address or a bracketed IPv6 one, an optional
# port, then a path, query or fragment without spaces or control characters. No user:password@.
_HOST_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
# IPv6 as RFC 4291 writes it (eight groups, one :: for a run of zeros, an IPv4 tail), no zone:
# every address it matches is one Python's URL parser and ipaddress take, so a workflow reading
# the URL never meets one they refuse.
_H16 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_IPV6 = "(?:" + "|".join((
    rf"(?:{_H16}:){{7}}{_H16}", rf"(?:{_H16}:){{1,7}}:", rf"(?:{_H16}:){{1,6}}:{_H16}",
    rf"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}", rf"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
    rf"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}", rf"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
    rf"{_H16}:(?::{_H16}){{1,6}}", rf":(?:(?::{_H16}){{1,7}}|:)", rf"::(?:[Ff]{{4}}:)?{_IPV4}",
    rf"(?:{_H16}:){{6}}{_IPV4}")) + ")"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEB_URL_PATTERN = (r"^https?://(?:\[" + _IPV6 + r"\]|(?:" + _HOST_LABEL + r"\.)*" + _HOST_LABEL + r"\.?)"
                   r"(?::" + _PORT + r")?(?:[/?#][^" + _SPACES + r"]*)?$")
# Text that is not blank (a reason, a note): some character other than a space, and no NUL.
NOT_BLANK_PATTERN = r"^[^\x00]*[^" + _SPACES + r"][^\x00]*$"
# An email address as people type it (the mail server has the last word): no spaces, one @, a
# domain ending in a top-level name of letters (as the mail tools and notification recipients
# take it: an address the API takes is one they send to).
EMAIL_PATTERN = r"^[^@" + _SPACES + r"]+@[^@" + _SPACES + r"]+\.[A-Za-z]{2,}$"
# A path on a site (/pricing), without spaces or control characters.
SITE_PATH_PATTERN = r"^/[^" + _SPACES + r"]*$"
# A time given as text (the API's since/until filters): RFC 3339, e.g. 2026-11-26T09:30:00Z; the
# offset may be left out (UTC), the T may be a space.
TIME_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?$")
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
