"""The keys that sign deciders: the MAC of a signed decision, and the activity that checks it.

A decision names its decider (``hitl.protocol.Decider``); only a holder of a decision key (the
API, which builds the decider from the verified token, and operators running ``bizosaas
approvals decide``) can sign one. Workflow code never sees a key: it asks the local activity
``approvals.verify_decision`` of the worker that runs it, which holds every key of
``BIZ_DECISION_KEYS``, and acts on the recorded verdict (replay reads it from history).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import timedelta

import msgspec
from pydantic import SecretStr
from temporalio import activity
from temporalio.common import RetryPolicy

from core.activity import Activities, ActivityPolicy
from core.names import WORKFLOWS_QUEUE

# Verifying a MAC is a few microseconds in the worker's process: short, few attempts.
VERIFY = ActivityPolicy(start_to_close=timedelta(seconds=5),
                        retry=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3))


def decision_mac(secret: bytes, message: bytes) -> str:
    """HMAC-SHA256 of ``message``, base64url without padding."""
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class VerifyDecision(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    message: str  # the canonical signing input (hitl.protocol.signing_input), as text
    mac: str


class DecisionVerdict(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    reason: str = ""  # why not, without any key material


class DecisionKeyActivities(Activities):
    """Holds the decision keys (key id -> secret); every key verifies, so a rotation keeps
    decisions signed with the previous key valid until that key is removed."""
    task_queue = WORKFLOWS_QUEUE
    default_policy = VERIFY
    local = True


    def __init__(self, keys: Mapping[str, SecretStr]) -> None:
        self._keys = {key_id: secret.get_secret_value().encode() for key_id, secret in keys.items()}

    @activity.defn(name="approvals.verify_decision")
    async def verify_decision(self, v: VerifyDecision) -> DecisionVerdict:
        secret = self._keys.get(v.key_id)
        if secret is None:
            return DecisionVerdict(valid=False, reason=f"signed with an unknown key {v.key_id!r}")
        if not hmac.compare_digest(decision_mac(secret, v.message.encode()), v.mac):
            return DecisionVerdict(valid=False, reason="the signature does not match the decision")
        return DecisionVerdict(valid=True)
