"""OrgWorkflow, the org's entity workflow, on Temporal's time-skipping server with real activities
(Postgres, moto, the local Neon server): each validator refuses what the org's state does not
allow (and a refusal never reaches the history), an accepted command has recorded the org's new
status when it returns, delete preempts onboarding, a parked suspend and a parked resume, and the
entity continues as new with its state."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from activities.ec2 import make_ec2_client
from db.keys import OrgKeyRepo
from db.orgs import OrgRepo
from db.workspaces import WorkspaceRepo
from domain.operations import org_workflow_id
from domain.org_entity import (
    DecisionCommand,
    DeleteCommand,
    OrgWorkflowInput,
    QuotaCommand,
    ResumeCommand,
    SuspendCommand,
)
from domain.resources import TIER_INSTANCE_TYPES, resource_name
from domain.status import OrgStatus
from tests.helpers import groups_named, instances_of, neon_branches_named, seed_org
from worker import build_worker
from workflows.org import REFUSED, OrgWorkflow

AMI = "ami-12c6146b"


def slug() -> str:
    return f"e{uuid.uuid4().hex[:8]}"


def entity_input(inp, *, adopt: OrgStatus | None = None, **extra: Any) -> OrgWorkflowInput:
    return OrgWorkflowInput(
        org_id=inp.org_id,
        slug=inp.slug,
        name=inp.name,
        plan=inp.plan,
        vpc_id=inp.vpc_id,
        subnet_ids=inp.subnet_ids,
        neon_mode=inp.neon_mode,
        adopt_status=adopt,
        **extra,
    )


async def active_org(pool, network) -> Any:
    """An org row as an active org that existed before its entity has it."""
    inp = await seed_org(pool, slug(), *network)
    await OrgRepo(pool).update(inp.org_id, actor="test", status=OrgStatus.active.value)
    return inp


async def refused(handle: WorkflowHandle, update: Any, arg: Any) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update(update, arg)
    assert failure.value.cause.type == REFUSED
    return failure.value.cause.message


async def accepted_updates(handle: WorkflowHandle) -> int:
    return len(
        [
            e
            async for e in handle.fetch_history_events()
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
    )


async def status_of(pool, org_id: str) -> str | None:
    row = await OrgRepo(pool).get(org_id)
    return row["status"] if row else None


class RefusingEc2:
    """Real moto underneath; the named calls fail for good, as with a missing IAM permission."""

    def __init__(self, real: Any, *refused_calls: str):
        self._real, self.refused = real, set(refused_calls)

    def __getattr__(self, name: str) -> Any:
        if name in self.refused:

            def refuse(**_: Any) -> dict:
                raise ClientError(
                    {
                        "Error": {"Code": "UnauthorizedOperation", "Message": f"not allowed: {name}"},
                        "ResponseMetadata": {"HTTPStatusCode": 403},
                    },
                    name,
                )

            return refuse
        return getattr(self._real, name)


class HeldEc2:
    """Real moto underneath; ``create_security_group`` waits until the test lets it go, so the
    onboarding is certainly in flight (with a create under way) when the delete arrives."""

    def __init__(self, real: Any):
        self._real = real
        self.reached = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_security_group(self, **kwargs: Any) -> dict:
        self.reached.set()
        assert self.release.wait(120), "never released"
        return self._real.create_security_group(**kwargs)


async def running_workspace(pool, ec2, inp) -> str:
    """A workspace recorded as running with a real instance in moto (its agent does not matter)."""
    org = await OrgRepo(pool).get(inp.org_id)
    ws = await WorkspaceRepo(pool).reserve(
        inp.org_id,
        workspace_id=f"ws_{uuid.uuid4().hex[:12]}",
        name="agent",
        role="r",
        runtime="hermes",
        tier=1,
        model="m",
        instance_type=TIER_INSTANCE_TYPES[1],
        subnet_id=org["subnet_ids"][0],
        actor="test",
    )
    tags = [
        {"Key": k, "Value": v}
        for k, v in (
            ("tenantflow:managed", "true"),
            ("tenantflow:org-id", inp.org_id),
            ("tenantflow:workspace-id", ws["id"]),
        )
    ]
    ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        SubnetId=org["subnet_ids"][0],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    await WorkspaceRepo(pool).update(ws["id"], actor="test", status="running")
    for _ in range(200):  # past EC2's visibility lag and out of pending
        if [i["State"]["Name"] for i in instances_of(ec2, ws["id"])] == ["running"]:
            return ws["id"]
        await asyncio.sleep(0.1)
    raise AssertionError("the instance never showed up running")


async def test_validators_refuse_what_the_state_does_not_allow(skip_env, settings, pool, network, task_queue):
    inp = await active_org(pool, network)
    key_repo = OrgKeyRepo(pool)
    _, key = await key_repo.mint(await OrgRepo(pool).get(inp.org_id), "k", actor="test")
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
        handle = await skip_env.client.start_workflow(
            OrgWorkflow.run,
            entity_input(inp, adopt=OrgStatus.active),
            id=org_workflow_id(inp.org_id),
            task_queue=task_queue,
        )
        assert "only a suspended org can be resumed; it is active" in await refused(
            handle, OrgWorkflow.resume, ResumeCommand()
        )
        assert "nothing is waiting for an operator" in await refused(handle, OrgWorkflow.retry, DecisionCommand())
        assert "nothing is waiting for an operator" in await refused(handle, OrgWorkflow.abandon, DecisionCommand())

        state = await handle.execute_update(OrgWorkflow.suspend, SuspendCommand(reason="unpaid"))
        # Recorded before the answer: from now on the org's keys are refused.
        assert state.status == OrgStatus.suspending
        assert await status_of(pool, inp.org_id) in ("suspending", "suspended")
        assert (await key_repo.authenticate(key))["status"] != "active"
        message = await refused(handle, OrgWorkflow.suspend, SuspendCommand())
        assert "in progress" in message or "already suspended" in message
        await _until(handle, lambda s: s.status == OrgStatus.suspended)
        await _row_until(pool, inp.org_id, lambda r: r["status"] == "suspended")
        assert "already suspended" in await refused(handle, OrgWorkflow.suspend, SuspendCommand())
        assert (await OrgRepo(pool).get(inp.org_id))["status_reason"] == "unpaid"

        await handle.execute_update(OrgWorkflow.set_quota, QuotaCommand(max_workspaces=3))
        assert (await OrgRepo(pool).get(inp.org_id))["max_workspaces"] == 3

        assert (await handle.execute_update(OrgWorkflow.resume, ResumeCommand())).status == OrgStatus.resuming
        await _until(handle, lambda s: s.status == OrgStatus.active)
        await _row_until(pool, inp.org_id, lambda r: r["status"] == "active")

        assert (await handle.execute_update(OrgWorkflow.delete, DeleteCommand())).status == OrgStatus.deleting
        assert "a deletion is already in progress" in await refused(handle, OrgWorkflow.delete, DeleteCommand())
        assert "being deleted" in await refused(handle, OrgWorkflow.set_quota, QuotaCommand(max_tier=2))
        result = await handle.result()
    assert result.status == OrgStatus.deleted
    assert await status_of(pool, inp.org_id) is None
    # Refused commands never reached the history: suspend, quota, resume and delete did.
    assert await accepted_updates(handle) == 4


async def _until(handle: WorkflowHandle, done: Any, attempts: int = 600) -> Any:
    for _ in range(attempts):
        state = await handle.query(OrgWorkflow.state)
        if done(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"entity never got there: {state}")


async def _row_until(pool, org_id: str, done: Any, attempts: int = 600) -> dict:
    for _ in range(attempts):
        row = await OrgRepo(pool).get(org_id)
        if done(row):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"org record never got there: {row}")


async def test_delete_preempts_onboarding_and_leaves_nothing(skip_env, settings, pool, ec2, network, task_queue):
    inp = await seed_org(pool, slug(), *network)
    held = HeldEc2(make_ec2_client(settings))
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue, ec2_client_factory=lambda: held):
        handle = await skip_env.client.start_workflow(
            OrgWorkflow.run, entity_input(inp), id=org_workflow_id(inp.org_id), task_queue=task_queue
        )
        await asyncio.to_thread(held.reached.wait, 60)
        state = await handle.execute_update(OrgWorkflow.delete, DeleteCommand())
        assert state.status == OrgStatus.deleting
        assert await status_of(pool, inp.org_id) == "deleting"
        # The security group create was under way when the delete came: it finishes, the
        # onboarding's compensation undoes it, then the cascade runs.
        held.release.set()
        result = await handle.result()
    assert result.status == OrgStatus.deleted
    assert groups_named(ec2, inp) == []
    assert neon_branches_named(settings, resource_name(inp.slug, inp.org_id)) == []
    onboarding = skip_env.client.get_workflow_handle(f"org-onboard:{inp.org_id}")
    assert (await onboarding.describe()).status.name == "CANCELED"
    async with pool.connection() as conn:
        receipt = (
            await (await conn.execute("SELECT receipt FROM org_receipts WHERE org_id = %s", (inp.org_id,))).fetchone()
        )["receipt"]
    # Every resource the onboarding created is on the receipt, and gone.
    kinds = {r["kind"]: r["status"] for r in receipt["resources"]}
    assert kinds == {"neon_branch": "deleted", "security_group": "deleted"}, receipt["resources"]


@pytest.mark.parametrize("operation", ["suspend", "resume"])
async def test_delete_preempts_a_parked_operation(operation, skip_env, settings, pool, ec2, network, task_queue):
    inp = await active_org(pool, network)
    workspace_id = await running_workspace(pool, ec2, inp)
    refusing = RefusingEc2(make_ec2_client(settings), "stop_instances" if operation == "suspend" else "start_instances")
    async with build_worker(
        skip_env.client, settings, pool, task_queue=task_queue, ec2_client_factory=lambda: refusing
    ):
        handle = await skip_env.client.start_workflow(
            OrgWorkflow.run,
            entity_input(inp, adopt=OrgStatus.active),
            id=org_workflow_id(inp.org_id),
            task_queue=task_queue,
        )
        if operation == "resume":
            refusing.refused = set()
            await handle.execute_update(OrgWorkflow.suspend, SuspendCommand(stop_instances=True))
            await _until(handle, lambda s: s.status == OrgStatus.suspended)
            refusing.refused = {"start_instances"}
            await handle.execute_update(OrgWorkflow.resume, ResumeCommand())
        else:
            await handle.execute_update(OrgWorkflow.suspend, SuspendCommand(stop_instances=True))
        parked = await _until(handle, lambda s: s.parked is not None)
        assert parked.operation == operation and "UnauthorizedOperation" in parked.parked.reason
        assert "in progress" in await refused(
            handle,
            OrgWorkflow.resume if operation == "suspend" else OrgWorkflow.suspend,
            ResumeCommand() if operation == "suspend" else SuspendCommand(),
        )
        await handle.execute_update(OrgWorkflow.delete, DeleteCommand())
        result = await handle.result()
    assert result.status == OrgStatus.deleted
    assert instances_of(ec2, workspace_id) == []  # nothing left running or stopped
    child = skip_env.client.get_workflow_handle(f"org-{operation}:{inp.org_id}")
    assert (await child.describe()).status.name == "CANCELED"


async def test_retry_and_abandon_a_parked_suspend(skip_env, settings, pool, ec2, network, task_queue):
    inp = await active_org(pool, network)
    await running_workspace(pool, ec2, inp)
    refusing = RefusingEc2(make_ec2_client(settings), "stop_instances")
    async with build_worker(
        skip_env.client, settings, pool, task_queue=task_queue, ec2_client_factory=lambda: refusing
    ):
        handle = await skip_env.client.start_workflow(
            OrgWorkflow.run,
            entity_input(inp, adopt=OrgStatus.active),
            id=org_workflow_id(inp.org_id),
            task_queue=task_queue,
        )
        await handle.execute_update(OrgWorkflow.suspend, SuspendCommand(stop_instances=True))
        await _until(handle, lambda s: s.parked is not None)
        await handle.execute_update(OrgWorkflow.retry, DecisionCommand())  # still refused by EC2: parks again
        await _until(handle, lambda s: s.parked is not None)
        state = await handle.execute_update(OrgWorkflow.abandon, DecisionCommand(actor="operator:alice"))
        assert state.parked is None
        settled = await _until(handle, lambda s: s.operation is None)
        row = await _row_until(pool, inp.org_id, lambda r: r["status"] == "suspended")
    assert settled.status == OrgStatus.suspended
    assert settled.failure_reason.startswith("abandoned by operator:alice")
    assert row["failure_reason"].startswith("abandoned by operator:alice") and row["operation"] is None


async def test_failed_onboarding_can_be_retried(skip_env, settings, pool, network, task_queue):
    inp = await seed_org(pool, slug(), *network)
    refusing = RefusingEc2(make_ec2_client(settings), "create_security_group")
    async with build_worker(
        skip_env.client, settings, pool, task_queue=task_queue, ec2_client_factory=lambda: refusing
    ):
        handle = await skip_env.client.start_workflow(
            OrgWorkflow.run, entity_input(inp), id=org_workflow_id(inp.org_id), task_queue=task_queue
        )
        failed = await _until(handle, lambda s: s.status == OrgStatus.failed)
        assert failed.failure_reason.startswith("create_security_group: UnauthorizedOperation")
        # The record says the same, and no operation is in progress any more.
        row = await _row_until(pool, inp.org_id, lambda r: r["status"] == "failed" and r["operation"] is None)
        assert row["failure_reason"] == failed.failure_reason
        refusing.refused = set()
        assert (await handle.execute_update(OrgWorkflow.retry, DecisionCommand())).status == OrgStatus.provisioning
        await _until(handle, lambda s: s.status == OrgStatus.active)
        row = await _row_until(pool, inp.org_id, lambda r: r["status"] == "active" and r["operation"] is None)
    assert row["failure_reason"] is None and row["security_group_id"]


async def test_continues_as_new_with_its_state(skip_env, settings, pool, network, task_queue):
    inp = await active_org(pool, network)
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
        started = await skip_env.client.start_workflow(
            OrgWorkflow.run,
            entity_input(inp, adopt=OrgStatus.active, history_limit=40),
            id=org_workflow_id(inp.org_id),
            task_queue=task_queue,
        )
        first = skip_env.client.get_workflow_handle(org_workflow_id(inp.org_id), run_id=started.result_run_id)
        handle = skip_env.client.get_workflow_handle_for(OrgWorkflow.run, org_workflow_id(inp.org_id))  # latest run
        for _ in range(3):
            await handle.execute_update(OrgWorkflow.suspend, SuspendCommand(reason="cycle"))
            await _until(handle, lambda s: s.status == OrgStatus.suspended)
            await handle.execute_update(OrgWorkflow.resume, ResumeCommand())
            await _until(handle, lambda s: s.status == OrgStatus.active)
        for _ in range(600):  # once idle (its last status write done), it continues as new
            if (await first.describe()).status.name == "CONTINUED_AS_NEW":
                break
            await asyncio.sleep(0.05)
        assert (await first.describe()).status.name == "CONTINUED_AS_NEW"
        assert (await handle.describe()).run_id != started.result_run_id
        # The state came along: the new run refuses a resume of an active org, and deletes it.
        assert "it is active" in await refused(handle, OrgWorkflow.resume, ResumeCommand())
        await handle.execute_update(OrgWorkflow.delete, DeleteCommand())
        assert (await handle.result()).status == OrgStatus.deleted


async def test_delete_preempts_a_suspend_in_the_middle_of_a_step(
    skip_env, settings, pool, ec2, network, task_queue, moto_url
):
    """The suspend is waiting for its instances to stop (not parked) when the delete comes: the
    step's activity is cancelled, and that is not a failure to park on (found by tools.chaos: the
    cancelled step parked, and the delete waited for it forever)."""
    inp = await active_org(pool, network)
    workspace_id = await running_workspace(pool, ec2, inp)
    config = f"{moto_url}/__devstack/ec2/config"
    await asyncio.to_thread(requests.post, config, json={"stopping_seconds": 600}, timeout=5)
    try:
        async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
            handle = await skip_env.client.start_workflow(
                OrgWorkflow.run,
                entity_input(inp, adopt=OrgStatus.active),
                id=org_workflow_id(inp.org_id),
                task_queue=task_queue,
            )
            await handle.execute_update(OrgWorkflow.suspend, SuspendCommand(stop_instances=True))
            child = skip_env.client.get_workflow_handle(f"org-suspend:{inp.org_id}")
            for _ in range(600):
                if (await child.query("progress"))["step"] == "stop_instances":
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # well inside the stop's wait
            await handle.execute_update(OrgWorkflow.delete, DeleteCommand())
            await asyncio.to_thread(requests.post, config, json={"stopping_seconds": 0.3}, timeout=5)
            result = await handle.result()
    finally:
        await asyncio.to_thread(requests.post, config, json={"stopping_seconds": 0.3}, timeout=5)
    assert result.status == OrgStatus.deleted
    assert (await child.describe()).status.name == "CANCELED"
    assert instances_of(ec2, workspace_id) == []
