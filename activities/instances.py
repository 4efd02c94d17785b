"""Workspace EC2 instances: launched exactly once, waited on, terminated and waited on again.

Exactly-once launch: the instance is looked up by its workspace tag before RunInstances, and
RunInstances carries a ClientToken derived from the workspace id together with user data that is
byte-identical on every attempt (the one-time registration token is derived, not random), so EC2
answers a retry after a lost answer with the original reservation. A mismatch (an earlier attempt
rendered other parameters) is resolved through the ``client-token`` filter.

Eventual consistency: right after RunInstances, EC2 may answer ``InvalidInstanceID.NotFound`` and
tag lookups may miss the instance, and a NotFound from TerminateInstances "does not mean the
instance has been or will be terminated". So a NotFound or an empty lookup counts as "gone" only
once the last launch attempt is older than ``ec2_consistency_window_seconds``; before that the
activity retries.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Awaitable, Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.boot_script import render_user_data
from activities.consistency import settle
from activities.ec2 import MANAGED_TAG, ORG_ID_TAG, ORG_SLUG_TAG, call_ec2, call_ec2_if_found, make_ec2_client
from activities.errors import actor, permanent
from db.ledger import Ledger
from db.workspaces import WorkspaceRepo
from domain import credentials
from domain.models import InstanceRef, OrgRef, ProvisionWorkspaceInput, WorkspaceInstance, WorkspaceInstances
from domain.settings import Settings

WORKSPACE_TAG = "tenantflow:workspace-id"
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]
_GONE_STATES = {"terminated", "shutting-down"}
_NOT_FOUND = "InvalidInstanceID.NotFound"


def instance_key(workspace_id: str) -> str:
    return f"ec2_instance:{workspace_id}"


def agent_url(private_ip: str, port: int) -> str:
    """Where the platform reaches a workspace's agent: the instance's own private address on the
    port its security group admits, never a URL the agent reports."""
    return f"http://{private_ip}:{port}"


def _is(err: BaseException, code: str) -> bool:
    return isinstance(err, ApplicationError) and err.type == code


def _workspace_of(instance: dict) -> str | None:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == WORKSPACE_TAG), None)


class InstanceActivities:
    def __init__(self, settings: Settings, ledger: Ledger, workspaces: WorkspaceRepo,
                 client_factory: Callable[[], Any] | None = None):
        self._settings = settings
        self._ledger = ledger
        self._workspaces = workspaces
        self._ec2 = (client_factory or (lambda: make_ec2_client(settings)))()

    async def _call(self, method: str, **kwargs: Any) -> dict:
        return await call_ec2(self._ec2, method, **kwargs)

    async def _describe(self, filters: list[dict]) -> list[dict]:
        reservations = (await self._call("describe_instances", Filters=filters))["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    async def _find(self, workspace_id: str, states: list[str]) -> list[dict]:
        return await self._describe([{"Name": f"tag:{WORKSPACE_TAG}", "Values": [workspace_id]},
                                     {"Name": "instance-state-name", "Values": states}])

    async def _may_be_invisible(self, workspace_id: str) -> bool:
        return await self._ledger.may_be_invisible(instance_key(workspace_id),
                                                   self._settings.ec2_consistency_window_seconds)

    async def _settle(self, check: Callable[[], Awaitable[Any]], workspace_id: str, what: str) -> Any:
        return await settle(check, lambda: self._may_be_invisible(workspace_id), what)

    # -- launch ---------------------------------------------------------------------------------

    @activity.defn
    async def launch_instance(self, inp: ProvisionWorkspaceInput) -> WorkspaceInstance:
        """Launch the workspace's instance unless it already exists; returns it with the URL the
        platform will dial. The registration token is derived here, so it never enters the
        workflow history (which the Temporal UI shows)."""
        key = instance_key(inp.workspace_id)
        await self._ledger.reserve(org_id=inp.org_id, org_slug=inp.org_slug, kind="ec2_instance",
                                   business_key=key, actor=actor())
        existing = await self._find(inp.workspace_id, _LIVE_STATES)
        instance = existing[0] if existing else await self._run_instance(inp)
        instance_id = instance["InstanceId"]
        url = agent_url(instance["PrivateIpAddress"], self._settings.agent_port)
        await self._ledger.mark_created(key, instance_id, actor=actor(), detail={"subnet_id": inp.subnet_id})
        await self._workspaces.update(inp.workspace_id, actor=actor(), action="workspace.instance_launched",
                                      instance_id=instance_id, agent_url=url)
        activity.logger.info("instance launched", extra={"org_slug": inp.org_slug, "workspace_id": inp.workspace_id,
                                                         "instance_id": instance_id, "reused": bool(existing)})
        return WorkspaceInstance(workspace_id=inp.workspace_id, instance_id=instance_id, agent_url=url)

    async def _run_instance(self, inp: ProvisionWorkspaceInput) -> dict:
        signing_key = self._settings.token_signing_key.get_secret_value()
        if not signing_key:
            raise permanent("TokenSigningKeyMissing", "TENANTFLOW_TOKEN_SIGNING_KEY is not set on the worker")
        token = credentials.derive(credentials.REGISTRATION_TOKEN, signing_key, f"{inp.workspace_id}:registration")
        ttl = timedelta(seconds=inp.registration_timeout_seconds + 60)
        await self._workspaces.record_registration_token(inp.workspace_id, token, ttl)
        user_data = render_user_data(
            workspace_id=inp.workspace_id, workspace_name=inp.name, org_slug=inp.org_slug, role=inp.role,
            runtime=inp.runtime, model=inp.model, tier=inp.tier, platform_url=inp.platform_url,
            registration_token=token.secret, heartbeat_interval_seconds=self._settings.agent_heartbeat_interval_seconds,
            listen_port=self._settings.agent_port,
        )
        tags = [
            {"Key": "Name", "Value": f"tf-{inp.org_slug}-{inp.name}"},
            {"Key": MANAGED_TAG, "Value": "true"},
            {"Key": ORG_ID_TAG, "Value": inp.org_id},
            {"Key": ORG_SLUG_TAG, "Value": inp.org_slug},
            {"Key": WORKSPACE_TAG, "Value": inp.workspace_id},
        ]
        await self._ledger.attempting_create(instance_key(inp.workspace_id))
        try:
            launched = await self._call(
                "run_instances",
                ImageId=inp.ami_id, InstanceType=inp.instance_type, MinCount=1, MaxCount=1,
                SubnetId=inp.subnet_id, SecurityGroupIds=[inp.security_group_id], UserData=user_data,
                ClientToken=inp.workspace_id,
                MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                   {"ResourceType": "volume", "Tags": tags}],
            )
        except ApplicationError as err:
            if _is(err, "IdempotentParameterMismatch"):
                # This token already launched this workspace's instance, with parameters an earlier
                # attempt rendered differently (another release, changed settings): it is ours.
                async def by_token() -> dict | None:
                    found = await self._describe([{"Name": "client-token", "Values": [inp.workspace_id]}])
                    return next((i for i in found if i["State"]["Name"] in _LIVE_STATES), None)

                instance = await self._settle(by_token, inp.workspace_id, f"the instance of {inp.workspace_id}")
                if instance is None:
                    raise
                return instance
            if _is(err, "IdempotentInstanceTerminated"):
                raise permanent("InstanceTerminated", f"the instance launched for {inp.workspace_id} "
                                                      "was terminated") from err
            raise
        return launched["Instances"][0]

    # -- waiting --------------------------------------------------------------------------------

    async def _state_of(self, instance_id: str) -> str | None:
        """The instance's state, or None when EC2 does not (or does not yet) know the id."""
        try:
            found = (await self._call("describe_instances", InstanceIds=[instance_id]))["Reservations"]
        except ApplicationError as err:
            if _is(err, _NOT_FOUND):
                return None
            raise
        return found[0]["Instances"][0]["State"]["Name"] if found else None

    async def _wait_for_state(self, workspace_id: str, instance_id: str, wanted: set[str], fail_on: set[str]) -> str:
        delay = 0.2
        seen = False
        while True:
            state = await self._state_of(instance_id)
            if state is None:
                # Terminated instances vanish from EC2 after a while, and new ones are invisible
                # for a while: NotFound means gone only for an instance seen before or launched
                # long enough ago.
                if "terminated" in wanted and (seen or not await self._may_be_invisible(workspace_id)):
                    return "terminated"
                state = "not visible yet"
            else:
                seen = True
                if state in wanted:
                    return state
                if state in fail_on:
                    raise permanent("InstanceLost", f"instance {instance_id} is {state}")
            activity.heartbeat(state)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    @activity.defn
    async def wait_instance_running(self, ref: WorkspaceInstance) -> None:
        await self._wait_for_state(ref.workspace_id, ref.instance_id, {"running"}, _GONE_STATES | {"stopped"})

    # -- termination ----------------------------------------------------------------------------

    async def _terminate(self, workspace_id: str, instance_id: str) -> None:
        """Terminate; a NotFound counts as gone only once the instance cannot be invisible."""
        await self._settle(lambda: call_ec2_if_found(self._ec2, _NOT_FOUND, "terminate_instances",
                                                     InstanceIds=[instance_id]), workspace_id, instance_id)

    async def _terminate_workspace(self, workspace_id: str, known_ids: set[str]) -> list[str]:
        """Terminate every instance of the workspace (found by tag, or known from the workflow and
        the ledger) and wait until each is terminated."""
        key = instance_key(workspace_id)
        row = await self._ledger.get(key)
        ids = {i["InstanceId"] for i in await self._find(workspace_id, _LIVE_STATES + ["shutting-down"])}
        ids |= known_ids | ({row["cloud_id"]} if row and row["cloud_id"] and row["status"] != "deleted" else set())
        if not ids and row and row["status"] == "pending":
            # A launch was attempted and nothing is on file (its answer lost): it may yet appear.
            async def by_tag() -> list[dict] | None:
                return await self._find(workspace_id, _LIVE_STATES + ["shutting-down"]) or None

            ids = {i["InstanceId"] for i in await self._settle(by_tag, workspace_id, f"the instance of {workspace_id}") or []}
        if ids:
            await self._ledger.mark_deleting(key, actor=actor())
            for instance_id in sorted(ids):
                await self._terminate(workspace_id, instance_id)
            for instance_id in sorted(ids):
                await self._wait_for_state(workspace_id, instance_id, {"terminated"}, set())
        if row:
            await self._ledger.mark_deleted(key, actor=actor())
        return sorted(ids)

    @activity.defn
    async def terminate_instances(self, ref: InstanceRef) -> list[str]:
        """Terminate every instance of the workspace and wait until each is terminated."""
        ids = await self._terminate_workspace(ref.workspace_id, {ref.instance_id} if ref.instance_id else set())
        activity.logger.info("instances terminated", extra={"org_slug": ref.org_slug, "workspace_id": ref.workspace_id,
                                                            "instance_ids": ids})
        return ids

    @activity.defn
    async def terminate_org_instances(self, org: OrgRef) -> list[str]:
        """Every instance tagged with the org or recorded in its ledger, whatever the workspace
        records say; waits until each is terminated."""
        by_workspace: dict[str, set[str]] = {}
        for inst in await self._describe([{"Name": f"tag:{ORG_ID_TAG}", "Values": [org.org_id]},
                                          {"Name": "instance-state-name", "Values": _LIVE_STATES + ["shutting-down"]}]):
            by_workspace.setdefault(_workspace_of(inst) or "", set()).add(inst["InstanceId"])
        for row in await self._ledger.for_org(org.org_id):
            if row["kind"] == "ec2_instance" and row["status"] != "deleted":
                by_workspace.setdefault(row["business_key"].split(":", 1)[1], set())
        untagged = by_workspace.pop("", set())
        ids = [i for workspace_id, known in sorted(by_workspace.items())
               for i in await self._terminate_workspace(workspace_id, known)]
        for instance_id in sorted(untagged):  # tagged with the org but with no workspace: all the same
            await self._terminate("", instance_id)
            await self._wait_for_state("", instance_id, {"terminated"}, set())
            ids.append(instance_id)
        activity.logger.info("org instances terminated", extra={"org_slug": org.slug, "instance_ids": ids})
        return ids

    # -- stop and start -------------------------------------------------------------------------

    @activity.defn
    async def stop_workspace_instances(self, req: WorkspaceInstances) -> list[str]:
        """Stop (not terminate) the workspaces' instances and wait until stopped; data stays."""
        return await self._change_power(req, "stop_instances", ["pending", "running", "stopping"], "stopped")

    @activity.defn
    async def start_workspace_instances(self, req: WorkspaceInstances) -> list[str]:
        return await self._change_power(req, "start_instances", ["stopped", "stopping", "pending", "running"],
                                        "running")

    async def _change_power(self, req: WorkspaceInstances, call: str, states: list[str], wanted: str) -> list[str]:
        found: list[tuple[str, str]] = []
        for workspace_id in req.workspace_ids:
            found += [(workspace_id, i["InstanceId"]) for i in await self._find(workspace_id, states)]
        if found:
            await self._call(call, InstanceIds=[instance_id for _, instance_id in found])
            for workspace_id, instance_id in found:
                await self._wait_for_state(workspace_id, instance_id, {wanted}, _GONE_STATES)
        return [instance_id for _, instance_id in found]
