"""The product against EC2's eventual consistency, on the strict local EC2 server: right after a
create, calls naming the new id answer NotFound and filtered lookups miss it. A NotFound then
must not fail a workspace, and must never be taken for "already gone" (which would mark the
ledger deleted and leave the resource running). Each of these failed on the code before the
strict server existed (NotFound was permanent, or read as gone)."""

from __future__ import annotations

import uuid

import pytest
import requests
from temporalio.testing import ActivityEnvironment

from activities.ec2 import Ec2Activities
from activities.instances import InstanceActivities
from db.ledger import Ledger
from db.workspaces import WorkspaceRepo
from domain.onboard_org import SecurityGroupInput
from domain.provision_workspace import InstanceRef, WorkspaceInstance
from domain.resources import instance_key, resource_name
from tests.conftest import STRICT_EC2_TIMINGS, new_org_id
from tests.helpers import instances_of

AMI = "ami-12c6146b"
LAG = 2.0  # seconds: long enough that every first call below lands inside it


@pytest.fixture
def lagging(moto_url):
    """EC2 hides new resources for LAG seconds (the suite's default lag is shorter)."""
    admin = f"{moto_url}/__devstack/ec2/config"
    requests.post(admin, json={"visibility_lag_seconds": LAG}, timeout=5).raise_for_status()
    yield
    requests.post(
        admin, json={"visibility_lag_seconds": STRICT_EC2_TIMINGS["--visibility-lag-seconds"]}, timeout=5
    ).raise_for_status()


def launch(ec2, subnet_id: str, workspace_id: str, org_id: str) -> str:
    tags = [
        {"Key": "tenantflow:workspace-id", "Value": workspace_id},
        {"Key": "tenantflow:org-id", "Value": org_id},
        {"Key": "tenantflow:managed", "Value": "true"},
    ]
    return ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet_id,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]


async def recorded_launch(pool, org_id: str, workspace_id: str) -> Ledger:
    """The ledger as the launch activity leaves it before RunInstances answers."""
    ledger = Ledger(pool)
    await ledger.reserve(
        org_id=org_id, org_slug="lag", kind="ec2_instance", business_key=instance_key(workspace_id), actor="test"
    )
    await ledger.attempting_create(instance_key(workspace_id))
    return ledger


async def test_waiting_for_a_new_instance_survives_not_found(settings, pool, ec2, network, lagging):
    org_id, workspace_id = new_org_id(), f"ws_{uuid.uuid4().hex[:12]}"
    ledger = await recorded_launch(pool, org_id, workspace_id)
    instance_id = launch(ec2, network[1][0], workspace_id, org_id)
    activities = InstanceActivities(settings, ledger, WorkspaceRepo(pool))
    await ActivityEnvironment().run(
        activities.wait_instance_running, WorkspaceInstance(workspace_id=workspace_id, instance_id=instance_id)
    )
    assert [i["State"]["Name"] for i in instances_of(ec2, workspace_id)] == ["running"]


async def test_terminating_a_new_instance_terminates_it(settings, pool, ec2, network, lagging):
    """TerminateInstances right after RunInstances answers NotFound and terminates nothing."""
    org_id, workspace_id = new_org_id(), f"ws_{uuid.uuid4().hex[:12]}"
    ledger = await recorded_launch(pool, org_id, workspace_id)
    instance_id = launch(ec2, network[1][0], workspace_id, org_id)
    activities = InstanceActivities(settings, ledger, WorkspaceRepo(pool))
    terminated = await ActivityEnvironment().run(
        activities.terminate_instances,
        InstanceRef(workspace_id=workspace_id, org_id=org_id, org_slug="lag", instance_id=instance_id),
    )
    assert terminated == [instance_id]
    assert instances_of(ec2, workspace_id) == []  # none left alive
    assert instances_of(ec2, workspace_id, states=("terminated",))[0]["InstanceId"] == instance_id
    assert (await ledger.get(instance_key(workspace_id)))["status"] == "deleted"


async def test_cleanup_after_a_lost_launch_answer_finds_the_instance(settings, pool, ec2, network, lagging):
    """The launch answer was lost (no instance id on file) and tag lookups do not show the new
    instance yet: the cleanup keeps looking instead of recording "nothing to terminate"."""
    org_id, workspace_id = new_org_id(), f"ws_{uuid.uuid4().hex[:12]}"
    ledger = await recorded_launch(pool, org_id, workspace_id)
    instance_id = launch(ec2, network[1][0], workspace_id, org_id)
    activities = InstanceActivities(settings, ledger, WorkspaceRepo(pool))
    terminated = await ActivityEnvironment().run(
        activities.terminate_instances, InstanceRef(workspace_id=workspace_id, org_id=org_id, org_slug="lag")
    )
    assert terminated == [instance_id]
    assert instances_of(ec2, workspace_id) == []


async def test_deleting_a_group_whose_create_answer_was_lost_deletes_it(settings, pool, ec2, network, lagging):
    """CreateSecurityGroup took effect but its answer was lost; lookups by name miss the group for
    a while: the delete keeps looking instead of recording it deleted and leaving it behind."""
    org_id = new_org_id()
    req = SecurityGroupInput(org_id=org_id, slug="lag", vpc_id=network[0])
    name = resource_name(req.slug, org_id)
    ledger = Ledger(pool)
    await ledger.reserve(
        org_id=org_id, org_slug="lag", kind="security_group", business_key=f"security_group:{name}", actor="test"
    )
    await ledger.attempting_create(f"security_group:{name}")
    ec2.create_security_group(GroupName=name, Description="lost answer", VpcId=network[0])
    await ActivityEnvironment().run(Ec2Activities(settings, ledger).delete_security_group, req)
    assert ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"] == []
    assert (await ledger.get(f"security_group:{name}"))["status"] == "deleted"


async def test_a_new_group_gets_its_rule_despite_not_found(settings, pool, ec2, network, lagging):
    """DescribeSecurityGroups and AuthorizeSecurityGroupIngress of a group created a moment ago
    answer InvalidGroup.NotFound: the group still ends with exactly its one rule."""
    req = SecurityGroupInput(org_id=new_org_id(), slug="lag", vpc_id=network[0])
    group = await ActivityEnvironment().run(Ec2Activities(settings, Ledger(pool)).ensure_security_group, req)
    perms = ec2.describe_security_groups(GroupIds=[group.group_id])["SecurityGroups"][0]["IpPermissions"]
    assert [(p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in perms] == [
        (settings.agent_port, [settings.platform_cidr])
    ]
