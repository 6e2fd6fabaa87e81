"""The approval protocol on the wire: what a workflow asks, what a person answers, what comes back.

Shared by workflow code (through ``hitl.approvals``) and the API. Everything here is pure and
deterministic: the ``decide`` update's validator and the signal handler run :func:`check_decision`
inside the workflow, and the API maps the error types it raises to HTTP (403/404/409/422).

A request is identified by its ``request_id`` (deterministic: the workflow names it, e.g.
``creative-1``); the pending action a person sees is ``{workflow_id}~{request_id}``.

Signed deciders
---------------
Anyone who may signal or update in the namespace could otherwise write any ``by``. So every
decision carries a :class:`DecisionSignature`: an HMAC-SHA256 (key from ``BIZ_DECISION_KEYS``,
named by its key id) over :func:`signing_input`, the msgspec JSON (sorted keys) of the whole
decision without the signature, with the workflow id, key id, issue and expiry times bound in.
The API signs the decider it builds from the verified token; operators sign with ``bizosaas
approvals decide`` (which sends the signal, or prints the signed payload for ``temporal
workflow signal --input``). The first configured key signs, every configured key verifies:
rotate by adding a new key id first, removing the old one once its decisions have expired.

The workflow verifies, but workflow code may not read settings and must replay the same, so
the keys never enter it: the decision is checked statically in the workflow (signed at all,
for this workflow, not expired, lifetime at most a day: :func:`signature_problem`, against
``workflow.now()``), then the MAC by the local activity ``approvals.verify_decision``, whose
worker holds the keys; its verdict is recorded in history, so replay needs no key. Both the
update and the signal carry a signature (an update is no more authenticated than a signal:
anyone with namespace access can send one). An update's validator cannot run an activity, so
it refuses only what is checkable statically (unsigned, another workflow, expired) before
anything enters history; its handler runs the verification before it records and answers
the receipt. A signal that fails anywhere (its payload is no decision, it is unsigned, forged,
bound to another workflow, expired, signed with an unknown key, or the protocol refuses it)
is recorded in the ``approvals`` query's ``rejected_signals`` and changes nothing.

Why this way: keys in the workflow's input, memo or code would put secrets in history or tie
rotation to deploys; checking only in the API leaves direct senders unchecked; a validator runs
in the workflow sandbox and cannot call out; a regular activity would cost a task queue round
trip. A local activity runs in the worker that runs the workflow, within the same workflow
task, and leaves only its verdict in history. A signed decision is visible in history; sent
again it can only repeat itself on the same request of the same workflow, which the protocol
refuses (already decided, or no longer open), and it expires (the API's after 5 minutes).

Running workflows that started before signed deciders keep replaying: the new path is behind
``workflow.patched(SIGNED_DECISIONS)``, asked when a ``decide`` message is handled. A run whose
first ``decide`` message comes after the deploy verifies from then on; one that handled a
``decide`` message before the deploy replays it as it was taken and, a patch being decided once
per run, keeps taking decisions unverified until it ends (an unsigned update is still refused:
validators do not replay).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from jsonschema import Draft202012Validator  # pure Python, deterministic

from activities.decision_keys import decision_mac

DecisionKind = Literal["approve", "reject", "request_changes", "edit"]
Audience = Literal["client", "admin"]
TimeoutAction = Literal["escalate", "auto_reject", "auto_approve"]
Outcome = Literal["approved", "rejected", "changes_requested", "timed_out_rejected", "timed_out_approved"]

ALL_DECISIONS: tuple[DecisionKind, ...] = ("approve", "reject", "request_changes", "edit")
ACTION_SEPARATOR = "~"

# Error types of a refused decision (ApplicationError.type): the API maps them to HTTP.
STALE_REQUEST = "StaleApprovalRequest"  # 409: not the open request (closed, replaced, unknown)
ALREADY_DECIDED = "AlreadyDecided"  # 409: this person decided this request already
DECISION_NOT_ALLOWED = "DecisionNotAllowed"  # 422
INVALID_EDITS = "InvalidEdits"  # 422
ROLE_NOT_ALLOWED = "RoleNotAllowed"  # 403
TENANT_NOT_ALLOWED = "TenantNotAllowed"  # 404 (out of scope reads as not found)
# A decider that is not proven (see "Signed deciders"). Through the API these mean the API's
# and the workers' BIZ_DECISION_KEYS differ: the API answers 503, never blames the caller.
UNSIGNED = "UnsignedDecision"
BAD_SIGNATURE = "InvalidDecisionSignature"  # forged, unknown key id, another workflow, bad lifetime
EXPIRED_SIGNATURE = "ExpiredDecisionSignature"
UNVERIFIED_SIGNATURE = "DecisionSignatureUnverified"  # the verifying activity failed
MALFORMED_DECISION = "MalformedDecision"  # a signal whose payload is not a decision
CONFLICT_TYPES = frozenset({STALE_REQUEST, ALREADY_DECIDED})
UNPROCESSABLE_TYPES = frozenset({DECISION_NOT_ALLOWED, INVALID_EDITS})
SIGNATURE_TYPES = frozenset({UNSIGNED, BAD_SIGNATURE, EXPIRED_SIGNATURE, UNVERIFIED_SIGNATURE})
DECISION_ERROR_TYPES = (CONFLICT_TYPES | UNPROCESSABLE_TYPES | SIGNATURE_TYPES
                        | {ROLE_NOT_ALLOWED, TENANT_NOT_ALLOWED})

SIGNED_DECISIONS = "signed-decisions"  # the workflow.patched id of verified deciders
SIGNATURE_VERSION = 1
MAX_SIGNATURE_TTL_SECONDS = 24 * 3600  # a signed decision is valid at most a day
CLOCK_SKEW_SECONDS = 300  # a signer's clock may run this far ahead of the workflow's
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
PLATFORM_ROLES = frozenset({"super_admin", "admin", "finance", "support"})


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a workflow asks a person (or a quorum of people) to decide."""

    request_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
    kind: str  # e.g. campaign.creative, campaign.budget_override
    title: Annotated[str, msgspec.Meta(max_length=200)]
    summary: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    proposal: dict[str, Any] = {}  # the AI's proposal, shown and diffed against edits
    allowed: list[DecisionKind] = msgspec.field(default_factory=lambda: ["approve", "reject"])
    audience: Audience = "client"
    roles: list[str] = msgspec.field(default_factory=lambda: ["client"])  # roles that may decide; the first is BizApprovalRole
    approvals_needed: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1  # distinct people
    due_in_seconds: Annotated[int, msgspec.Meta(gt=0)] = 72 * 3600
    remind_after_seconds: list[int] = []  # after opening (and again after an escalation)
    timeout_action: TimeoutAction = "auto_reject"
    escalate_to_audience: Audience = "admin"
    escalate_to_roles: list[str] = msgspec.field(default_factory=lambda: ["admin", "super_admin"])
    escalation_due_in_seconds: int | None = None  # None: an escalated request waits for a person
    edit_schema: dict[str, Any] | None = None  # JSON schema of `edits` (an object of proposal fields)
    # Named courses of action (e.g. retry, write_off, suspend): an approve must pick one.
    choices: list[Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,40}$")]] = []


class Decider(msgspec.Struct, frozen=True, kw_only=True):
    """Who decides: filled by the API from the verified token, never from the request body."""

    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    roles: list[str]
    tenant_id: str | None = None
    tenants: list[str] = []  # partners: the tenants they manage
    acting_as: str | None = None  # the impersonating admin, from the `act` claim


class DecisionSignature(msgspec.Struct, frozen=True, kw_only=True):
    """Proof that a holder of a decision key vouches for the decider (see "Signed deciders")."""

    key_id: Annotated[str, msgspec.Meta(pattern=KEY_ID_PATTERN)]
    workflow_id: str  # the workflow the decision is for
    issued_at: int  # Unix seconds
    expires_at: int  # Unix seconds
    mac: str  # base64url HMAC-SHA256 of signing_input(), no padding


class DecisionInput(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of the ``decide`` update and of the ``decide`` signal."""

    request_id: str
    decision: DecisionKind
    by: Decider
    comment: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    edits: dict[str, Any] | None = None
    choice: str | None = None  # with approve, where the request offers choices
    signature: DecisionSignature | None = None  # required since signed deciders; see above
    via: Literal["link"] | None = None  # sent from a one-click email link (signed with the rest)


class _SigningInput(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a signature covers: the decision without its signature, bound to a workflow, a
    key and a lifetime. Encoded with sorted keys, so the bytes do not depend on field order."""

    v: int
    workflow_id: str
    request_id: str
    decision: str
    by: Decider
    comment: str
    edits: dict[str, Any] | None
    choice: str | None
    key_id: str
    issued_at: int
    expires_at: int
    via: str | None = None  # left out when None: signatures made before it still verify


class EditChange(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    before: Any = None
    after: Any = None


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    decision: DecisionKind
    decided_by: str
    role: str  # the role it was decided in
    tenant_id: str | None
    acting_as: str | None
    decided_at: datetime
    comment: str = ""
    edits: dict[str, Any] | None = None
    diff: list[EditChange] = []
    via: Literal["update", "signal", "link"] = "update"
    choice: str | None = None


class DecisionReceipt(msgspec.Struct, frozen=True, kw_only=True):
    action_id: str
    request_id: str
    decision: DecisionKind
    decided_by: str
    decided_at: datetime
    approvals: int  # approvals (approve/edit) so far, this one included
    approvals_needed: int
    closed: bool  # this decision closed the request


class RejectedSignal(msgspec.Struct, frozen=True, kw_only=True):
    """A ``decide`` signal that failed validation: recorded, otherwise ignored."""

    request_id: str
    decided_by: str
    error_type: str
    reason: str
    received_at: datetime


class ApprovalOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What ``request`` returns to the workflow."""

    request_id: str
    outcome: Outcome
    proposal: dict[str, Any]  # the proposal with every accepted edit applied
    comment: str = ""  # the deciding comment (request_changes: what to change)
    decisions: list[DecisionRecord] = []
    escalated: bool = False
    choice: str | None = None  # the deciding approval's choice, where the request offered choices

    @property
    def approved(self) -> bool:
        return self.outcome in ("approved", "timed_out_approved")


class OpenApproval(msgspec.Struct, frozen=True, kw_only=True):
    """A request as it stands: what the inbox and the detail page show."""

    request: ApprovalRequest
    tenant_id: str
    opened_at: datetime
    due_at: datetime | None  # None: escalated with no further deadline
    audience: Audience
    roles: list[str]
    escalated: bool = False
    status: Literal["open", "closed"] = "open"
    outcome: Outcome | None = None
    closed_at: datetime | None = None
    decisions: list[DecisionRecord] = []


class ApprovalsView(msgspec.Struct, frozen=True, kw_only=True):
    """The ``approvals`` query: the open request, the closed ones, refused signals."""

    open: OpenApproval | None = None
    closed: list[OpenApproval] = []
    rejected_signals: list[RejectedSignal] = []


class DecisionRefused(Exception):
    """A decision the protocol refuses; ``type`` is one of the error types above."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


def signing_input(d: DecisionInput, sig: DecisionSignature) -> bytes:
    """The canonical bytes a decision's MAC is computed over (``sig.mac`` is not part of it)."""
    return msgspec.json.encode(_SigningInput(
        v=SIGNATURE_VERSION, workflow_id=sig.workflow_id, request_id=d.request_id, decision=d.decision, by=d.by,
        comment=d.comment, edits=d.edits, choice=d.choice, key_id=sig.key_id, issued_at=sig.issued_at,
        expires_at=sig.expires_at, via=d.via), order="sorted")


def sign_decision(d: DecisionInput, *, workflow_id: str, key_id: str, secret: bytes, issued_at: int,
                  ttl_seconds: int) -> DecisionInput:
    """``d`` with a signature for ``workflow_id`` by key ``key_id``, valid ``ttl_seconds`` from
    ``issued_at`` (Unix seconds; at most :data:`MAX_SIGNATURE_TTL_SECONDS`)."""
    if not 0 < ttl_seconds <= MAX_SIGNATURE_TTL_SECONDS:
        raise ValueError(f"a signed decision lives 1 to {MAX_SIGNATURE_TTL_SECONDS} seconds, not {ttl_seconds}")
    sig = DecisionSignature(key_id=key_id, workflow_id=workflow_id, issued_at=issued_at,
                            expires_at=issued_at + ttl_seconds, mac="")
    mac = decision_mac(secret, signing_input(d, sig))
    return msgspec.structs.replace(d, signature=msgspec.structs.replace(sig, mac=mac))


def signature_problem(d: DecisionInput, workflow_id: str, now: datetime) -> DecisionRefused | None:
    """What is wrong with ``d``'s signature short of its MAC (which needs the keys), checked
    against the workflow's own id and clock; None: only the MAC is left to verify."""
    sig = d.signature
    if sig is None:
        return DecisionRefused(UNSIGNED, "the decision is not signed: decide through the API or sign it with "
                                         "`bizosaas approvals decide`")
    if sig.workflow_id != workflow_id:
        return DecisionRefused(BAD_SIGNATURE, f"the decision is signed for another workflow ({sig.workflow_id!r})")
    if not 0 < sig.expires_at - sig.issued_at <= MAX_SIGNATURE_TTL_SECONDS:
        return DecisionRefused(BAD_SIGNATURE, "the signature's lifetime is not between 1 second and a day")
    at = int(now.timestamp())
    if sig.issued_at > at + CLOCK_SKEW_SECONDS:
        return DecisionRefused(BAD_SIGNATURE, "the signature is issued in the future")
    if at >= sig.expires_at:
        return DecisionRefused(EXPIRED_SIGNATURE, "the signature has expired: sign the decision again")
    return None


def action_id(workflow_id: str, request_id: str) -> str:
    return f"{workflow_id}{ACTION_SEPARATOR}{request_id}"


def undeclared_roles(req: ApprovalRequest, declared: frozenset[str] | None) -> list[str]:
    """The roles ``req`` lets decide (at first or once escalated) that its capability does not
    declare in ``decide_roles`` (``None``: the workflow declares no capability, nothing to check)."""
    if declared is None:
        return []
    named = list(req.roles) + (list(req.escalate_to_roles) if req.timeout_action == "escalate" else [])
    return sorted({r for r in named if r not in declared})


def split_action_id(value: str) -> tuple[str, str]:
    """``(workflow_id, request_id)``; ValueError if it is not an action id."""
    wf_id, sep, request_id = value.rpartition(ACTION_SEPARATOR)
    if not sep or not wf_id or not request_id:
        raise ValueError(f"{value!r} is not a pending action id")
    return wf_id, request_id


def deciding_role(approval: OpenApproval, by: Decider) -> str | None:
    """The role ``by`` may decide this request in, or None."""
    for role in approval.roles:
        if role in by.roles:
            return role
    return None


def in_tenant_scope(tenant_id: str, by: Decider) -> bool:
    if PLATFORM_ROLES & set(by.roles):
        return True
    if "partner" in by.roles and tenant_id in by.tenants:
        return True
    return by.tenant_id == tenant_id


def check_decision(approval: OpenApproval | None, d: DecisionInput, tenant_id: str) -> str:
    """Why ``d`` cannot be taken (raises DecisionRefused), else the role it is decided in.
    ``tenant_id`` is the workflow's: a decider out of its scope learns nothing else."""
    if not in_tenant_scope(tenant_id, d.by):
        raise DecisionRefused(TENANT_NOT_ALLOWED, "approval not found")
    if (approval is not None and approval.status != "open" and approval.request.request_id == d.request_id
            and any(r.decided_by == d.by.sub for r in approval.decisions)):
        # A decider asking again after an answer they did not get (a 503, a cut connection):
        # their decision closed it.
        raise DecisionRefused(ALREADY_DECIDED, f"{d.by.sub} has already decided {d.request_id!r}")
    if approval is None or approval.status != "open" or approval.request.request_id != d.request_id:
        raise DecisionRefused(STALE_REQUEST, f"approval {d.request_id!r} is not open (already closed or replaced)")
    role = deciding_role(approval, d.by)
    if role is None:
        raise DecisionRefused(ROLE_NOT_ALLOWED, f"deciding needs one of the roles {approval.roles}")
    if d.decision not in approval.request.allowed:
        raise DecisionRefused(DECISION_NOT_ALLOWED,
                              f"decision {d.decision!r} is not allowed here; allowed: {approval.request.allowed}")
    if any(r.decided_by == d.by.sub for r in approval.decisions):
        raise DecisionRefused(ALREADY_DECIDED, f"{d.by.sub} has already decided {d.request_id!r}")
    if d.decision == "edit":
        if not d.edits:
            raise DecisionRefused(INVALID_EDITS, "an edit decision needs `edits`")
        problem = edits_problem(d.edits, approval.request.edit_schema)
        if problem:
            raise DecisionRefused(INVALID_EDITS, f"edits do not match the schema: {problem}")
    elif d.edits:
        raise DecisionRefused(INVALID_EDITS, f"`edits` go with the decision 'edit', not {d.decision!r}")
    choices = approval.request.choices
    if choices and d.decision == "approve" and d.choice not in choices:
        raise DecisionRefused(DECISION_NOT_ALLOWED, f"approve needs a `choice`, one of {choices}")
    if d.choice is not None and (not choices or d.decision != "approve"):
        raise DecisionRefused(DECISION_NOT_ALLOWED, "`choice` goes with approve, where the approval offers choices")
    if d.decision == "request_changes" and not d.comment.strip():
        raise DecisionRefused(DECISION_NOT_ALLOWED, "request_changes needs a comment saying what to change")
    return role


def edits_problem(edits: dict[str, Any], schema: dict[str, Any] | None) -> str | None:
    """Why ``edits`` fail ``schema`` (None: they pass). No schema: nothing may be edited."""
    if schema is None:
        return "this approval takes no edits"
    errors = sorted(Draft202012Validator(schema).iter_errors(edits), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    return "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5])


def diff(before: Any, after: Any, path: str = "") -> list[EditChange]:
    """What ``after`` changes in ``before``, by JSON path (objects by key, lists by index)."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[EditChange] = []
        for key in sorted(set(before) | set(after)):
            changes += diff(before.get(key), after.get(key), f"{path}/{key}")
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        changes = []
        for i, (b, a) in enumerate(zip(before, after)):
            changes += diff(b, a, f"{path}/{i}")
        return changes
    return [] if before == after else [EditChange(path=path or "/", before=before, after=after)]


def apply_edits(proposal: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """The proposal with ``edits`` merged in (objects merge by key; anything else replaces)."""
    merged = dict(proposal)
    for key, value in edits.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_edits(merged[key], value)
        else:
            merged[key] = value
    return merged
