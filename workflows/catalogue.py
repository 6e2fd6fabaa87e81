"""The catalogue: every capability the API can start, with its input type and workflow id.

The API builds one typed, documented start route per entry; the worker registers every
workflow listed here. Adding a capability is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows.onboarding import OnboardingInput, OnboardingWorkflow


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

    @property
    def run(self) -> Callable[..., Any]:
        return self.workflow.run  # type: ignore[attr-defined]


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
    )
}

WORKFLOWS: list[type] = [c.workflow for c in CATALOGUE.values()]
