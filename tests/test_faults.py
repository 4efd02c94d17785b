"""Fault injection against the real workflows and activities: Neon 423/429/503 storms, EC2
throttling and 5xx (including a 5xx after the call took effect), and Postgres connections dropped
while a workflow runs. Each ends with the workflow complete and no duplicate resource."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError
from temporalio.client import WorkflowFailureError

from activities.ec2 import make_ec2_client
from api.workspaces import provision_input
from db.ledger import Ledger
from db.orgs import OrgRepo
from db.workspaces import WorkspaceRepo
from domain.resources import TIER_INSTANCE_TYPES, resource_name
from tests.conftest import neon_stats
from tests.helpers import groups_named, instances_of, neon_branches_named, seed_org
from worker import build_worker
from workflows.onboard_org import OnboardOrgWorkflow
from workflows.provision_workspace import ProvisionWorkspaceWorkflow


def slug() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


async def onboard(env, settings, pool, task_queue, inp, **overrides):
    async with build_worker(env.client, settings, pool, task_queue=task_queue, **overrides):
        return await env.client.execute_workflow(
            OnboardOrgWorkflow.run, inp, id=f"org-onboard:{inp.org_id}", task_queue=task_queue
        )


async def test_neon_fault_storm_onboards_with_one_branch(
    skip_env, settings, pool, ec2, network, task_queue, neon_faults, neon_url
):
    inp = await seed_org(pool, slug(), *network)
    storm = [
        ("/projects/{project_id}/branches", "GET", 503, 2),
        ("/projects/{project_id}/branches", "POST", 423, 2),
        ("/projects/{project_id}/branches", "POST", 429, 2),
        ("/projects/{project_id}/branches", "POST", 503, 2),
        ("/projects/{project_id}/operations/{operation_id}", "GET", 503, 2),
        ("/projects/{project_id}/operations/{operation_id}", "GET", 423, 1),
    ]
    for route, method, status, count in storm:
        neon_faults(route, status, method=method, count=count, retry_after=0.1 if status == 429 else None)
    result = await onboard(skip_env, settings, pool, task_queue, inp)
    assert result.status == "active"
    branches = neon_branches_named(settings, resource_name(inp.slug, inp.org_id))
    assert [b["id"] for b in branches] == [result.neon_branch_id]
    stats = neon_stats(neon_url)["by_route"]
    posts = stats["POST /projects/{project_id}/branches"]
    assert sum(int(v) for k, v in posts.items() if k.startswith("2")) == 1  # no duplicate create
    served = sum(int(v) for s in stats.values() for k, v in s.items() if k in ("423", "429", "503"))
    assert served >= 9  # the POST faults at least; lookups may or may not meet theirs
    assert (await OrgRepo(pool).get(inp.org_id))["status"] == "active"


class FlakyEc2:
    """The real moto client behind AWS-style throttling and 5xx: every call of a listed method
    first fails ``throttle`` times with RequestLimitExceeded and once with InternalError; and
    ``lose_answer`` methods fail once with a 500 *after* the call took effect."""

    def __init__(self, real: Any, throttle: int = 2, lose_answer: tuple[str, ...] = ()):
        self._real, self._throttle, self._lose = real, throttle, set(lose_answer)
        self.calls: dict[str, int] = {}
        self.injected = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr) or name.startswith(("get_", "can_", "meta", "exceptions")):
            return attr

        def call(**kwargs: Any) -> Any:
            n = self.calls[name] = self.calls.get(name, 0) + 1
            if n <= self._throttle:
                self.injected += 1
                raise ClientError(
                    {
                        "Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."},
                        "ResponseMetadata": {"HTTPStatusCode": 503},
                    },
                    name,
                )
            if n == self._throttle + 1:
                self.injected += 1
                raise ClientError(
                    {
                        "Error": {"Code": "InternalError", "Message": "internal error"},
                        "ResponseMetadata": {"HTTPStatusCode": 500},
                    },
                    name,
                )
            answer = attr(**kwargs)
            if name in self._lose:
                self._lose.discard(name)
                self.injected += 1
                raise ClientError(
                    {
                        "Error": {"Code": "InternalError", "Message": "answer lost"},
                        "ResponseMetadata": {"HTTPStatusCode": 500},
                    },
                    name,
                )
            return answer

        return call


async def test_ec2_throttling_and_5xx_onboarding_one_group(skip_env, settings, pool, ec2, network, task_queue):
    inp = await seed_org(pool, slug(), *network)
    flaky = FlakyEc2(make_ec2_client(settings), lose_answer=("create_security_group",))
    result = await onboard(skip_env, settings, pool, task_queue, inp, ec2_client_factory=lambda: flaky)
    assert result.status == "active"
    assert flaky.injected >= 4
    assert [g["GroupId"] for g in groups_named(ec2, inp)] == [result.security_group_id]


async def test_ec2_throttling_and_5xx_provisioning_one_instance(skip_env, settings, pool, ec2, network, task_queue):
    from tests.helpers import onboard_active_org

    org = await onboard_active_org(skip_env, settings, pool, task_queue, network, slug())
    ws = await WorkspaceRepo(pool).reserve(
        org["id"],
        workspace_id=f"ws_{uuid.uuid4().hex[:12]}",
        name="agent-1",
        role="Fault worker",
        runtime="hermes",
        tier=1,
        model="m",
        instance_type=TIER_INSTANCE_TYPES[1],
        subnet_id=org["subnet_ids"][0],
        actor="test",
    )
    flaky = FlakyEc2(make_ec2_client(settings), lose_answer=("run_instances", "terminate_instances"))
    # Nobody boots the agent: the (skipped) registration timeout makes the cleanup run through
    # the same faults, so launch and terminate are both exercised.
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue, ec2_client_factory=lambda: flaky):
        with pytest.raises(WorkflowFailureError) as failure:
            await skip_env.client.execute_workflow(
                ProvisionWorkspaceWorkflow.run,
                provision_input(settings, org, ws),
                id=f"ws-provision:{ws['id']}",
                task_queue=task_queue,
            )
    assert "did not register" in str(failure.value.cause)
    every = instances_of(
        ec2, ws["id"], states=("pending", "running", "stopping", "stopped", "shutting-down", "terminated")
    )
    assert len(every) == 1, "a throttled or lost-answer RunInstances must not start a second instance"
    assert every[0]["State"]["Name"] == "terminated"
    row = await WorkspaceRepo(pool).get(ws["id"])
    assert row["status"] == "failed" and row["instance_id"] == every[0]["InstanceId"]
    ledger = {r["business_key"]: r for r in await Ledger(pool).for_org(org["id"])}
    assert ledger[f"ec2_instance:{ws['id']}"]["status"] == "deleted"


async def test_postgres_connections_dropped_mid_workflow(
    dev_env, settings, pool, ec2, network, task_queue, neon_faults
):
    inp = await seed_org(pool, slug(), *network)
    # Keep the workflow busy for a few seconds (Neon retries) while its connections are dropped.
    neon_faults("/projects/{project_id}/branches", 503, method="POST", count=2)
    killed = 0
    url = settings.database_url.get_secret_value()

    async def drop_connections(stop: asyncio.Event) -> None:
        # Five rounds, one a second: a failover-like burst, not a permanent outage.
        nonlocal killed
        for _ in range(5):
            if stop.is_set():
                return
            with psycopg.connect(url, autocommit=True) as conn:
                killed += len(
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).fetchall()
                )
            await asyncio.sleep(1.0)

    stop = asyncio.Event()
    dropper = asyncio.create_task(drop_connections(stop))
    try:
        result = await asyncio.wait_for(onboard(dev_env, settings, pool, task_queue, inp), 240)
    finally:
        stop.set()
        await dropper
        await pool.check()
    assert killed > 0
    assert result.status == "active"
    row = await OrgRepo(pool).get(inp.org_id)
    assert row["status"] == "active"
    assert row["neon_branch_id"] == result.neon_branch_id and row["security_group_id"] == result.security_group_id
    ledger = {r["kind"]: r for r in await Ledger(pool).for_org(inp.org_id)}
    assert ledger["neon_branch"]["status"] == "created" and ledger["security_group"]["status"] == "created"
    assert len(neon_branches_named(settings, resource_name(inp.slug, inp.org_id))) == 1
    assert len(groups_named(ec2, inp)) == 1
