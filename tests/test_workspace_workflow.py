"""ProvisionWorkspaceWorkflow's failure paths and exactly-once launch, on the time-skipping server
(a 10-minute registration timeout passes in milliseconds) with real activities against moto."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from temporalio.client import WorkflowFailureError
from temporalio.testing import ActivityEnvironment

from activities.boot_script import CONFIG_MARKER
from activities.ec2 import make_ec2_client
from activities.instances import InstanceActivities
from api.workspaces import provision_input
from db.ledger import Ledger
from db.workspaces import WorkspaceRepo
from domain.resources import TIER_INSTANCE_TYPES
from tests.conftest import ec2_stats
from tests.helpers import instances_of, onboard_active_org, user_data_of
from worker import build_worker
from workflows.provision_workspace import ProvisionWorkspaceWorkflow


@pytest.fixture
async def org(skip_env, settings, pool, network, task_queue):
    return await onboard_active_org(skip_env, settings, pool, task_queue, network, f"w{uuid.uuid4().hex[:8]}")


async def reserve(pool, org: dict, name: str = "agent-1", tier: int = 2) -> dict:
    return await WorkspaceRepo(pool).reserve(
        org["id"],
        workspace_id=f"ws_{uuid.uuid4().hex[:12]}",
        name=name,
        role="Test worker",
        runtime="hermes",
        tier=tier,
        model="claude-sonnet-4",
        instance_type=TIER_INSTANCE_TYPES[tier],
        subnet_id=org["subnet_ids"][0],
        actor="test",
    )


async def test_registration_timeout_terminates_and_frees_the_slot(skip_env, settings, pool, ec2, org, task_queue):
    ws = await reserve(pool, org)
    inp = provision_input(settings, org, ws)
    assert inp.registration_timeout_seconds == 600  # the real default: time-skipping makes it instant
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await skip_env.client.execute_workflow(
                ProvisionWorkspaceWorkflow.run, inp, id=f"ws-provision:{ws['id']}", task_queue=task_queue
            )
    assert "did not register within 600s" in str(failure.value.cause)
    row = await WorkspaceRepo(pool).get(ws["id"])
    assert row["status"] == "failed" and row["holds_slot"] is False
    assert row["failure_reason"] == "wait_registration: agent did not register within 600s"
    assert instances_of(ec2, ws["id"]) == []  # nothing live
    terminated = instances_of(ec2, ws["id"], states=("terminated",))
    assert [i["InstanceId"] for i in terminated] == [row["instance_id"]]
    ledger = {r["business_key"]: r for r in await Ledger(pool).for_org(org["id"])}
    assert ledger[f"ec2_instance:{ws['id']}"]["status"] == "deleted"
    # The token the instance booted with is dead.
    async with pool.connection() as conn:
        tokens = await (
            await conn.execute(
                "SELECT kind, revoked_at, used_at FROM workspace_tokens WHERE workspace_id = %s", (ws["id"],)
            )
        ).fetchall()
    assert tokens and all(t["revoked_at"] is not None for t in tokens)


async def test_boot_user_data_carries_only_the_one_time_token(skip_env, settings, pool, ec2, org, task_queue):
    ws = await reserve(pool, org, tier=3)
    inp = provision_input(settings, org, ws)
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
        handle = await skip_env.client.start_workflow(
            ProvisionWorkspaceWorkflow.run, inp, id=f"ws-provision:{ws['id']}", task_queue=task_queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        history = json.dumps([str(e) async for e in handle.fetch_history_events()])
    instance = instances_of(ec2, ws["id"], states=("terminated",))[0]
    assert instance["InstanceType"] == "t3.large"
    assert instance["SubnetId"] == org["subnet_ids"][0]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [org["security_group_id"]]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["tenantflow:org-id"] == org["id"] and tags["tenantflow:workspace-id"] == ws["id"]
    script = user_data_of(ec2, instance["InstanceId"])
    assert "set -x" not in script and "set -ex" not in script and "http.server" not in script
    config = json.loads(script.split(f"<<'{CONFIG_MARKER}'\n")[1].split(f"\n{CONFIG_MARKER}")[0])
    assert config["workspace_id"] == ws["id"] and config["platform_url"] == settings.public_url
    assert config["registration_token"].startswith("tfr_")
    secret_like = {k for k, v in config.items() if isinstance(v, str) and v.startswith(("tfk_", "tfw_", "tfp_"))}
    assert secret_like == set()
    for secret in (settings.provision_secret.get_secret_value(), settings.neon_api_key.get_secret_value()):
        assert secret not in script
    # The token never enters the workflow history the Temporal UI shows.
    assert config["registration_token"] not in history


class LostAnswerEc2:
    """Real moto underneath; the first RunInstances succeeds but its answer is lost on the way
    back, as when the worker dies right after AWS started the instance."""

    def __init__(self, real: Any):
        self._real = real
        self.run_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def run_instances(self, **kwargs: Any) -> dict:
        self.run_calls += 1
        answer = self._real.run_instances(**kwargs)
        if self.run_calls == 1:
            raise EndpointConnectionError(endpoint_url="http://ec2")
        return answer


async def test_launch_retried_after_lost_answer_starts_exactly_one_instance(
    skip_env, settings, pool, ec2, org, task_queue
):
    ws = await reserve(pool, org)
    flaky = LostAnswerEc2(make_ec2_client(settings))
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue, ec2_client_factory=lambda: flaky):
        with pytest.raises(WorkflowFailureError):  # nobody registers: it times out, which is fine here
            await skip_env.client.execute_workflow(
                ProvisionWorkspaceWorkflow.run,
                provision_input(settings, org, ws),
                id=f"ws-provision:{ws['id']}",
                task_queue=task_queue,
            )
    # The retry either found the instance by its tag or (still invisible to tag lookups right after
    # the launch) sent the same ClientToken with byte-identical user data, which EC2 answers with
    # the original reservation: one instance either way.
    assert flaky.run_calls in (1, 2)
    every = instances_of(ec2, ws["id"], states=EVERY_STATE)
    assert len(every) == 1
    assert (await WorkspaceRepo(pool).get(ws["id"]))["instance_id"] == every[0]["InstanceId"]


EVERY_STATE = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")


async def test_launch_committed_but_answer_lost_at_ec2_is_one_instance(
    skip_env, settings, pool, ec2, org, task_queue, ec2_faults, moto_url
):
    """EC2 itself starts the instance and then answers 500: the retry carries the same token and
    the same user data (the registration token is derived, not random), so EC2 returns the first
    reservation instead of refusing with IdempotentParameterMismatch or starting a second one."""
    ws = await reserve(pool, org)
    ec2_faults("RunInstances", "InternalError", when="after")
    async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
        with pytest.raises(WorkflowFailureError):  # nobody registers: it times out, which is fine here
            await skip_env.client.execute_workflow(
                ProvisionWorkspaceWorkflow.run,
                provision_input(settings, org, ws),
                id=f"ws-provision:{ws['id']}",
                task_queue=task_queue,
            )
    assert ec2_stats(moto_url)["errors"]["RunInstances"] == {"InternalError": 1}
    assert len(instances_of(ec2, ws["id"], states=EVERY_STATE)) == 1


async def test_launch_with_other_parameters_under_the_same_token_adopts_the_first(
    skip_env, settings, pool, ec2, org, task_queue
):
    """An earlier attempt launched with other parameters (another release rendered other user
    data): EC2 answers IdempotentParameterMismatch, and the launch resolves it through the
    client-token filter instead of failing the workspace."""
    ws = await reserve(pool, org)
    first = ec2.run_instances(
        ImageId=settings.agent_ami_id,
        MinCount=1,
        MaxCount=1,
        ClientToken=ws["id"],
        SubnetId=ws["subnet_id"],
        UserData="#!/bin/bash\necho an older release\n",
        InstanceType=ws["instance_type"],
    )["Instances"][0]["InstanceId"]
    activities = InstanceActivities(settings, Ledger(pool), WorkspaceRepo(pool))
    launched = await ActivityEnvironment().run(activities.launch_instance, provision_input(settings, org, ws))
    assert launched.instance_id == first
    assert launched.agent_url.startswith("https://127.") and launched.agent_url.endswith(f":{settings.agent_port}")
