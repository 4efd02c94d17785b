"""OnboardOrgWorkflow with its real activities against moto, the local Neon server and Postgres,
on both Temporal's time-skipping test server and the dev server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowFailureError

from activities.ec2 import make_ec2_client
from db.ledger import Ledger
from db.orgs import OrgRepo
from domain.resources import resource_name
from tests.conftest import neon_stats
from tests.helpers import (
    can_connect,
    groups_named,
    neon_branches_named,
    neon_projects_named,
    physical_databases,
    seed_org,
    tenant_connection_uri,
)
from worker import build_worker
from workflows.onboard_org import OnboardOrgWorkflow


def slug() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def run_onboarding(env, settings, pool, task_queue, inp, **overrides):
    async with build_worker(env.client, settings, pool, task_queue=task_queue, **overrides):
        return await env.client.execute_workflow(
            OnboardOrgWorkflow.run, inp, id=f"org-onboard:{inp.org_id}", task_queue=task_queue
        )


async def assert_fully_onboarded(settings, pool, ec2, inp, result) -> None:
    name = resource_name(inp.slug, inp.org_id)
    assert result.status == "active"
    row = await OrgRepo(pool).get(inp.org_id)
    assert row["status"] == "active" and row["failure_reason"] is None
    assert row["security_group_id"] == result.security_group_id
    assert row["neon_branch_id"] == result.neon_branch_id
    branches = neon_branches_named(settings, name)
    assert [b["id"] for b in branches] == [result.neon_branch_id]
    assert can_connect(tenant_connection_uri(settings, result.neon_project_id, result.neon_branch_id))
    groups = groups_named(ec2, inp)
    assert [g["GroupId"] for g in groups] == [result.security_group_id]
    assert groups[0]["VpcId"] == inp.vpc_id
    perms = groups[0]["IpPermissions"]
    assert len(perms) == 1 and perms[0]["FromPort"] == 443 and perms[0]["ToPort"] == 443
    assert [r["CidrIp"] for r in perms[0]["IpRanges"]] == [settings.platform_cidr]
    tags = {t["Key"]: t["Value"] for t in groups[0]["Tags"]}
    assert tags["tenantflow:org-id"] == inp.org_id and tags["tenantflow:org-slug"] == inp.slug
    ledger = {r["kind"]: r for r in await Ledger(pool).for_org(inp.org_id)}
    assert ledger["security_group"]["status"] == "created"
    assert ledger["security_group"]["cloud_id"] == result.security_group_id
    assert ledger["neon_branch"]["status"] == "created"
    assert ledger["neon_branch"]["cloud_id"] == result.neon_branch_id


async def test_onboarding_on_time_skipping_server(skip_env, settings, pool, ec2, network, task_queue):
    inp = await seed_org(pool, slug(), *network)
    result = await run_onboarding(skip_env, settings, pool, task_queue, inp)
    await assert_fully_onboarded(settings, pool, ec2, inp, result)


async def test_onboarding_on_dev_server_reports_progress(dev_env, settings, pool, ec2, network, task_queue):
    inp = await seed_org(pool, slug(), *network)
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        handle = await dev_env.client.start_workflow(
            OnboardOrgWorkflow.run, inp, id=f"org-onboard:{inp.org_id}", task_queue=task_queue
        )
        result = await handle.result()
        progress = await handle.query(OnboardOrgWorkflow.progress)
        description = await handle.describe()
    await assert_fully_onboarded(settings, pool, ec2, inp, result)
    assert progress.status == "active" and progress.steps_done == progress.steps_total == 5
    assert progress.step == "done"
    history = [e async for e in handle.fetch_history_events()]
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled[:3] == ["validate_network", "record_org_provisioning", "ensure_tenant_database"]
    assert "ensure_security_group" in scheduled and scheduled[-1] == "mark_org_active"
    assert description.status.name == "COMPLETED"


async def test_project_per_tenant_mode(skip_env, settings, pool, ec2, network, task_queue):
    inp = await seed_org(pool, slug(), *network, mode="project")
    result = await run_onboarding(skip_env, settings, pool, task_queue, inp)
    name = resource_name(inp.slug, inp.org_id)
    projects = neon_projects_named(settings, name)
    assert [p["id"] for p in projects] == [result.neon_project_id]
    assert result.neon_project_id != settings.neon_project_id
    assert can_connect(tenant_connection_uri(settings, result.neon_project_id, None))
    assert len(groups_named(ec2, inp)) == 1
    assert (await OrgRepo(pool).get(inp.org_id))["status"] == "active"


async def test_neon_permanent_failure_leaves_nothing(skip_env, settings, pool, ec2, network, task_queue, neon_faults):
    inp = await seed_org(pool, slug(), *network)
    neon_faults("/projects/{project_id}/branches", 403, method="POST", count=-1)
    with pytest.raises(WorkflowFailureError) as failure:
        await run_onboarding(skip_env, settings, pool, task_queue, inp)
    assert "NeonAccessDenied" in str(failure.value.cause)
    row = await OrgRepo(pool).get(inp.org_id)
    assert row["status"] == "failed"
    assert row["failure_reason"].startswith("create_database: NeonAccessDenied")
    assert neon_branches_named(settings, resource_name(inp.slug, inp.org_id)) == []
    assert groups_named(ec2, inp) == []


async def test_a_network_that_changed_since_acceptance_fails_validate_and_leaves_nothing(
    skip_env, settings, pool, ec2, network, task_queue
):
    """The API checked the network before it accepted the org; onboarding checks it again, since a
    subnet may be deleted (or an id mistyped by a direct start) in between."""
    vpc_id, subnets = network
    inp = await seed_org(pool, slug(), vpc_id, [subnets[0], "subnet-0000000000"])
    with pytest.raises(WorkflowFailureError):
        await run_onboarding(skip_env, settings, pool, task_queue, inp)
    row = await OrgRepo(pool).get(inp.org_id)
    assert row["status"] == "failed"
    assert row["failure_reason"] == "validate: InvalidNetwork: subnet subnet-0000000000 does not exist in us-east-1"
    assert neon_branches_named(settings, resource_name(inp.slug, inp.org_id)) == []
    assert groups_named(ec2, inp) == []


class FailingIngressEc2:
    """The real moto client, except that opening the port is refused as real AWS would refuse it
    for a role without ec2:AuthorizeSecurityGroupIngress."""

    def __init__(self, real: Any):
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def authorize_security_group_ingress(self, **_: Any) -> dict:
        raise ClientError(
            {
                "Error": {"Code": "UnauthorizedOperation", "Message": "not authorized"},
                "ResponseMetadata": {"HTTPStatusCode": 403},
            },
            "AuthorizeSecurityGroupIngress",
        )


async def test_late_permanent_failure_compensates_in_reverse(skip_env, settings, pool, ec2, pg, network, task_queue):
    inp = await seed_org(pool, slug(), *network)
    before = physical_databases(pg)
    with pytest.raises(WorkflowFailureError):
        await run_onboarding(
            skip_env,
            settings,
            pool,
            task_queue,
            inp,
            ec2_client_factory=lambda: FailingIngressEc2(make_ec2_client(settings)),
        )
    row = await OrgRepo(pool).get(inp.org_id)
    assert row["status"] == "failed"
    assert row["failure_reason"].startswith("create_security_group: UnauthorizedOperation")
    assert row["security_group_id"] is None and row["neon_branch_id"] is None
    assert groups_named(ec2, inp) == []
    assert neon_branches_named(settings, resource_name(inp.slug, inp.org_id)) == []
    assert physical_databases(pg) == before
    ledger = await Ledger(pool).for_org(inp.org_id)
    assert {r["kind"]: r["status"] for r in ledger} == {"neon_branch": "deleted", "security_group": "deleted"}


async def test_transient_neon_faults_are_retried(
    dev_env, settings, pool, ec2, network, task_queue, neon_faults, neon_url
):
    inp = await seed_org(pool, slug(), *network)
    route = "/projects/{project_id}/branches"
    neon_faults(route, 423, method="POST", count=1)
    result = None
    # One fault at a time, in order: 423 Locked, then 429 with Retry-After, then 503.
    neon_faults(route, 429, method="POST", count=1, retry_after=1)
    neon_faults(route, 503, method="POST", count=1)
    result = await run_onboarding(dev_env, settings, pool, task_queue, inp)
    await assert_fully_onboarded(settings, pool, ec2, inp, result)
    stats = neon_stats(neon_url)
    statuses = stats["by_route"][f"POST {route}"]
    # The injected 423, and any the emulator answers itself while an operation an earlier test
    # started on the shared platform project still holds its lock (as Neon does).
    assert statuses.get("423", 0) >= 1 and statuses.get("429") == 1 and statuses.get("503") == 1
    assert sum(int(v) for k, v in statuses.items() if k.startswith("2")) == 1


async def test_reset_to_start_replays_without_duplicates(dev_env, settings, pool, ec2, network, task_queue):
    """A Reset from the Temporal UI re-runs every activity; each must find what already exists."""
    inp = await seed_org(pool, slug(), *network)
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        handle = await dev_env.client.start_workflow(
            OnboardOrgWorkflow.run, inp, id=f"org-onboard:{inp.org_id}", task_queue=task_queue
        )
        first = await handle.result()
        events = [e async for e in handle.fetch_history_events()]
        first_task_done = next(
            e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        reset = await dev_env.client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=dev_env.client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=handle.result_run_id),
                reason="test: replay onboarding from the start",
                workflow_task_finish_event_id=first_task_done,
                request_id=str(uuid.uuid4()),
                reset_reapply_type=ResetReapplyType.RESET_REAPPLY_TYPE_NONE,
            )
        )
        second = await dev_env.client.get_workflow_handle_for(
            OnboardOrgWorkflow.run, handle.id, run_id=reset.run_id
        ).result()
    assert second.model_dump() == first.model_dump()
    await assert_fully_onboarded(settings, pool, ec2, inp, second)
