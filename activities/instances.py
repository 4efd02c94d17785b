"""Workspace EC2 instances: launched exactly once, waited on, terminated and waited on again.

Exactly-once launch: the instance is looked up by its workspace tag before RunInstances, and
RunInstances carries a ClientToken derived from the workspace id, so a retry after a launch
whose answer was lost finds the first instance instead of starting a second one (moto ignores
ClientToken, real EC2 honours it; the tag lookup covers both).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Callable

from temporalio import activity

from activities.boot_script import render_user_data
from activities.ec2 import MANAGED_TAG, ORG_ID_TAG, ORG_SLUG_TAG, call_ec2, make_ec2_client
from activities.errors import actor, permanent
from db.ledger import Ledger
from db.workspaces import WorkspaceRepo
from domain.models import InstanceRef, OrgRef, ProvisionWorkspaceInput, WorkspaceInstance, WorkspaceInstances
from domain.settings import Settings

WORKSPACE_TAG = "tenantflow:workspace-id"
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]
_GONE_STATES = {"terminated", "shutting-down"}


def instance_key(workspace_id: str) -> str:
    return f"ec2_instance:{workspace_id}"


class InstanceActivities:
    def __init__(self, settings: Settings, ledger: Ledger, workspaces: WorkspaceRepo,
                 client_factory: Callable[[], Any] | None = None):
        self._settings = settings
        self._ledger = ledger
        self._workspaces = workspaces
        self._ec2 = (client_factory or (lambda: make_ec2_client(settings)))()

    async def _call(self, method: str, **kwargs: Any) -> dict:
        return await call_ec2(self._ec2, method, **kwargs)

    async def _find(self, workspace_id: str, states: list[str]) -> list[dict]:
        reservations = (await self._call("describe_instances", Filters=[
            {"Name": f"tag:{WORKSPACE_TAG}", "Values": [workspace_id]},
            {"Name": "instance-state-name", "Values": states},
        ]))["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    @activity.defn
    async def launch_instance(self, inp: ProvisionWorkspaceInput) -> WorkspaceInstance:
        """Mint the one-time token, render the boot script and launch, unless already launched.

        These three happen in one activity on purpose: the token then never enters the
        workflow history (which the Temporal UI shows).
        """
        key = instance_key(inp.workspace_id)
        await self._ledger.reserve(org_id=inp.org_id, org_slug=inp.org_slug, kind="ec2_instance",
                                   business_key=key, actor=actor())
        existing = await self._find(inp.workspace_id, _LIVE_STATES)
        if existing:
            instance_id = existing[0]["InstanceId"]
        else:
            ttl = timedelta(seconds=inp.registration_timeout_seconds + 60)
            token = await self._workspaces.mint_registration_token(inp.workspace_id, ttl)
            user_data = render_user_data(
                workspace_id=inp.workspace_id, workspace_name=inp.name, org_slug=inp.org_slug, role=inp.role,
                runtime=inp.runtime, model=inp.model, tier=inp.tier, platform_url=inp.platform_url,
                registration_token=token, heartbeat_interval_seconds=self._settings.agent_heartbeat_interval_seconds,
            )
            tags = [
                {"Key": "Name", "Value": f"tf-{inp.org_slug}-{inp.name}"},
                {"Key": MANAGED_TAG, "Value": "true"},
                {"Key": ORG_ID_TAG, "Value": inp.org_id},
                {"Key": ORG_SLUG_TAG, "Value": inp.org_slug},
                {"Key": WORKSPACE_TAG, "Value": inp.workspace_id},
            ]
            launched = await self._call(
                "run_instances",
                ImageId=inp.ami_id, InstanceType=inp.instance_type, MinCount=1, MaxCount=1,
                SubnetId=inp.subnet_id, SecurityGroupIds=[inp.security_group_id], UserData=user_data,
                ClientToken=inp.workspace_id,
                MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                   {"ResourceType": "volume", "Tags": tags}],
            )
            instance_id = launched["Instances"][0]["InstanceId"]
        await self._ledger.mark_created(key, instance_id, actor=actor(), detail={"subnet_id": inp.subnet_id})
        await self._workspaces.update(inp.workspace_id, actor=actor(), action="workspace.instance_launched",
                                      instance_id=instance_id)
        activity.logger.info("instance launched", extra={"org_slug": inp.org_slug, "workspace_id": inp.workspace_id,
                                                         "instance_id": instance_id, "reused": bool(existing)})
        return WorkspaceInstance(workspace_id=inp.workspace_id, instance_id=instance_id)

    async def _wait_for_state(self, instance_id: str, wanted: set[str], fail_on: set[str]) -> str:
        delay = 0.2
        while True:
            try:
                found = (await self._call("describe_instances", InstanceIds=[instance_id]))["Reservations"]
            except Exception as err:
                # Terminated instances eventually vanish from EC2: gone is as good as terminated.
                if getattr(err, "type", None) == "InvalidInstanceID.NotFound" and "terminated" in wanted:
                    return "terminated"
                raise
            state = found[0]["Instances"][0]["State"]["Name"] if found else "terminated"
            if state in wanted:
                return state
            if state in fail_on:
                raise permanent("InstanceLost", f"instance {instance_id} is {state}")
            activity.heartbeat(state)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    @activity.defn
    async def wait_instance_running(self, ref: WorkspaceInstance) -> None:
        await self._wait_for_state(ref.instance_id, {"running"}, _GONE_STATES | {"stopped"})

    @activity.defn
    async def terminate_instances(self, ref: InstanceRef) -> list[str]:
        """Terminate every instance of the workspace and wait until each is terminated."""
        key = instance_key(ref.workspace_id)
        instances = [i["InstanceId"] for i in await self._find(ref.workspace_id, _LIVE_STATES + ["shutting-down"])]
        if ref.instance_id and ref.instance_id not in instances:
            instances.append(ref.instance_id)
        if instances:
            await self._ledger.mark_deleting(key, actor=actor())
            try:
                await self._call("terminate_instances", InstanceIds=instances)
            except Exception as err:
                if getattr(err, "type", None) != "InvalidInstanceID.NotFound":
                    raise
            for instance_id in instances:
                await self._wait_for_state(instance_id, {"terminated"}, set())
        if await self._ledger.get(key):
            await self._ledger.mark_deleted(key, actor=actor())
        activity.logger.info("instances terminated", extra={"org_slug": ref.org_slug, "workspace_id": ref.workspace_id,
                                                            "instance_ids": instances})
        return instances

    async def _org_instances(self, org_id: str, states: list[str]) -> list[dict]:
        reservations = (await self._call("describe_instances", Filters=[
            {"Name": f"tag:{ORG_ID_TAG}", "Values": [org_id]},
            {"Name": "instance-state-name", "Values": states},
        ]))["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    @activity.defn
    async def terminate_org_instances(self, org: OrgRef) -> list[str]:
        """Every instance tagged with the org, whatever its record says; waits until terminated."""
        instances = await self._org_instances(org.org_id, _LIVE_STATES + ["shutting-down"])
        ids = [i["InstanceId"] for i in instances]
        for inst in instances:
            workspace = next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == WORKSPACE_TAG), None)
            if workspace and await self._ledger.get(instance_key(workspace)):
                await self._ledger.mark_deleting(instance_key(workspace), actor=actor())
        if ids:
            await self._call("terminate_instances", InstanceIds=ids)
        for inst in instances:
            await self._wait_for_state(inst["InstanceId"], {"terminated"}, set())
            workspace = next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == WORKSPACE_TAG), None)
            if workspace and await self._ledger.get(instance_key(workspace)):
                await self._ledger.mark_deleted(instance_key(workspace), actor=actor())
        activity.logger.info("org instances terminated", extra={"org_slug": org.slug, "instance_ids": ids})
        return ids

    @activity.defn
    async def stop_workspace_instances(self, req: WorkspaceInstances) -> list[str]:
        """Stop (not terminate) the workspaces' instances and wait until stopped; data stays."""
        return await self._change_power(req, "stop_instances", ["pending", "running", "stopping"], "stopped")

    @activity.defn
    async def start_workspace_instances(self, req: WorkspaceInstances) -> list[str]:
        return await self._change_power(req, "start_instances", ["stopped", "stopping", "pending", "running"],
                                        "running")

    async def _change_power(self, req: WorkspaceInstances, call: str, states: list[str], wanted: str) -> list[str]:
        ids: list[str] = []
        for workspace_id in req.workspace_ids:
            ids += [i["InstanceId"] for i in await self._find(workspace_id, states)]
        if ids:
            await self._call(call, InstanceIds=ids)
            for instance_id in ids:
                await self._wait_for_state(instance_id, {wanted}, _GONE_STATES)
        return ids
