"""A capability's ``decide_roles`` is the whole set of people who may decide its approvals: the
declaration hands it to the workflow, and a request naming any other role (at first, or once
escalated) fails when it is asked, before anyone is notified or any decision can reach it."""

from __future__ import annotations

import uuid

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.client import Client
    from temporalio.worker import Worker

    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalOutcome, ApprovalRequest, undeclared_roles
    from tests.support import assert_eventually
    from workflows.catalogue import CATALOGUE
    from workflows.capability import ADMINS, Capability


@workflow.defn(name="AskAdminsOnly")
class AskAdminsOnly(HumanDecisions):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)

    @workflow.run
    async def run(self, req: ApprovalRequest) -> ApprovalOutcome:
        return await self.ask(req)


CAPABILITY = Capability(name="ask-admins-only", workflow=AskAdminsOnly, input_type=ApprovalRequest,
                        business_key=lambda r: r.request_id, start_roles=ADMINS, decide_roles=ADMINS)


def test_every_capability_that_asks_people_hands_its_deciders_to_its_workflow() -> None:
    asking = [c for c in CATALOGUE.values() if hasattr(c.workflow, "decide_roles")]
    assert {c.name for c in asking} >= {"campaign", "order", "dunning"}
    for c in asking:
        assert c.decide_roles and c.workflow.decide_roles == c.decide_roles, c.name
    for c in CATALOGUE.values():
        if c not in asking:
            assert not c.decide_roles, f"{c.name} declares deciders but asks nobody"


def test_a_request_is_checked_with_its_escalation() -> None:
    admins = frozenset({"admin", "super_admin"})
    req = ApprovalRequest(request_id="r-1", kind="k", title="t", roles=["client"], timeout_action="escalate",
                          escalate_to_roles=["finance"])
    assert undeclared_roles(req, admins) == ["client", "finance"]
    assert undeclared_roles(req, admins | {"client", "finance"}) == []
    # Without an escalation its roles never decide; without a declaration nothing is checked.
    assert undeclared_roles(ApprovalRequest(request_id="r-2", kind="k", title="t", roles=["admin"],
                                            escalate_to_roles=["finance"]), admins) == []
    assert undeclared_roles(req, None) == []


def test_a_declaration_that_asks_nobody_or_names_no_deciders_is_refused() -> None:
    with pytest.raises(ValueError, match="declare decide_roles"):
        Capability(name="no-deciders", workflow=AskAdminsOnly, input_type=ApprovalRequest,
                   business_key=lambda r: r.request_id, start_roles=ADMINS)

    with pytest.raises(ValueError, match="another capability"):
        Capability(name="ask-clients", workflow=AskAdminsOnly, input_type=ApprovalRequest,
                   business_key=lambda r: r.request_id, start_roles=ADMINS, decide_roles=frozenset({"client"}))
    assert AskAdminsOnly.decide_roles == ADMINS

    class NobodyAsked:
        pass

    with pytest.raises(ValueError, match="asks nobody"):
        Capability(name="nobody-asked", workflow=NobodyAsked, input_type=dict,
                   business_key=lambda r: "k", start_roles=ADMINS, decide_roles=ADMINS)


async def test_a_request_naming_an_undeclared_role_fails_its_task_and_opens_nothing(client: Client) -> None:
    queue = f"decide-roles-{uuid.uuid4().hex[:8]}"
    req = ApprovalRequest(request_id="creative-1", kind="test", title="Approve", roles=["client"])
    async with Worker(client, task_queue=queue, workflows=[AskAdminsOnly]):
        handle = await client.start_workflow(AskAdminsOnly.run, req, id=f"acme:ask-admins-only:{uuid.uuid4().hex[:8]}",
                                             task_queue=queue)

        async def failed_task() -> None:
            failures = [str(await client.data_converter.decode_failure(e.workflow_task_failed_event_attributes.failure))
                        async for e in handle.fetch_history_events()
                        if e.HasField("workflow_task_failed_event_attributes")]
            assert any("['client']" in m and "decide_roles" in m for m in failures), failures

        await assert_eventually(failed_task)
        desc = await handle.describe()
        # Nothing was opened: no pending-approval mark, still running (a fixed build can pick it up).
        assert desc.status is not None and desc.status.name == "RUNNING"
        assert not (desc.search_attributes or {}).get("BizPendingApproval")
        await handle.terminate("test over")
