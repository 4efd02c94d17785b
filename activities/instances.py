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
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.boot_script import render_user_data
from activities.consistency import settle
from activities.ec2 import call_ec2, call_ec2_if_found, make_ec2_client
from activities.errors import actor, permanent
from db.ledger import Ledger
from db.workspaces import WorkspaceRepo
from domain import credentials
from domain.provision_workspace import InstanceRef, ProvisionWorkspaceInput, WorkspaceInstance
from domain.refs import OrgRef
from domain.resources import (
    GONE_STATES,
    LIVE_STATES,
    ORG_ID_TAG,
    PRESENT_STATES,
    WORKSPACE_TAG,
    LedgerStatus,
    ResourceKind,
    instance_key,
    instance_tags,
    name_of_key,
    state_filter,
    tag_filter,
    tags_of,
)
from domain.settings import Settings
from domain.suspend_org import WorkspaceInstances

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

T = TypeVar("T")
NOT_FOUND = "InvalidInstanceID.NotFound"


def agent_url(private_ip: str, port: int) -> str:
    """Where the platform reaches a workspace's agent: the instance's own private address on the
    port its security group admits, never a URL the agent reports; over TLS with the certificate
    the agent registered (pinned by the worker)."""
    return f"https://{private_ip}:{port}"


def _is(err: BaseException, code: str) -> bool:
    return isinstance(err, ApplicationError) and err.type == code


async def instance_state(client: EC2Client, instance_id: str) -> str | None:
    """The instance's state, or None when EC2 does not (or does not yet) know the id."""
    try:
        found = (await call_ec2(client, "describe_instances", InstanceIds=[instance_id]))["Reservations"]
    except ApplicationError as err:
        if _is(err, NOT_FOUND):
            return None
        raise
    state: str | None = found[0]["Instances"][0]["State"]["Name"] if found else None
    return state


async def _never_invisible() -> bool:
    return False


async def wait_for_state(
    client: EC2Client,
    instance_id: str,
    wanted: set[str],
    fail_on: set[str] | frozenset[str],
    may_be_invisible: Callable[[], Awaitable[bool]] = _never_invisible,
) -> str:
    """Poll (heartbeating) until the instance is in a ``wanted`` state; fail for good on ``fail_on``.

    Terminated instances vanish from EC2 after a while, and new ones are invisible for a while:
    NotFound means terminated only for an instance seen before, or one that cannot be invisible
    any more (``may_be_invisible``)."""
    delay = 0.2
    seen = False
    while True:
        state = await instance_state(client, instance_id)
        if state is None:
            if "terminated" in wanted and (seen or not await may_be_invisible()):
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


class InstanceActivities:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        workspaces: WorkspaceRepo,
        client_factory: Callable[[], EC2Client] | None = None,
    ):
        self._settings = settings
        self._ledger = ledger
        self._workspaces = workspaces
        self._ec2 = (client_factory or (lambda: make_ec2_client(settings)))()

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return await call_ec2(self._ec2, method, **kwargs)

    async def _describe(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        reservations = (await self._call("describe_instances", Filters=filters))["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    async def _find(self, workspace_id: str, states: tuple[str, ...]) -> list[dict[str, Any]]:
        return await self._describe([tag_filter(WORKSPACE_TAG, workspace_id), state_filter(*states)])

    async def _may_be_invisible(self, workspace_id: str) -> bool:
        return await self._ledger.may_be_invisible(
            instance_key(workspace_id), self._settings.ec2_consistency_window_seconds
        )

    async def _settle(self, check: Callable[[], Awaitable[T | None]], workspace_id: str, what: str) -> T | None:
        return await settle(check, lambda: self._may_be_invisible(workspace_id), what)

    # -- launch ---------------------------------------------------------------------------------

    @activity.defn
    async def launch_instance(self, inp: ProvisionWorkspaceInput) -> WorkspaceInstance:
        """Launch the workspace's instance unless it already exists; returns it with the URL the
        platform will dial. The registration token is derived here, so it never enters the
        workflow history (which the Temporal UI shows)."""
        key = instance_key(inp.workspace_id)
        await self._ledger.reserve(
            org_id=inp.org_id, org_slug=inp.org_slug, kind=ResourceKind.ec2_instance, business_key=key, actor=actor()
        )
        existing = await self._find(inp.workspace_id, LIVE_STATES)
        instance = existing[0] if existing else await self._run_instance(inp)
        instance_id = instance["InstanceId"]
        url = agent_url(instance["PrivateIpAddress"], self._settings.agent_port)
        await self._ledger.mark_created(key, instance_id, actor=actor(), detail={"subnet_id": inp.subnet_id})
        await self._workspaces.update(
            inp.workspace_id,
            actor=actor(),
            action="workspace.instance_launched",
            instance_id=instance_id,
            agent_url=url,
        )
        activity.logger.info(
            "instance launched",
            extra={
                "org_slug": inp.org_slug,
                "workspace_id": inp.workspace_id,
                "instance_id": instance_id,
                "reused": bool(existing),
            },
        )
        return WorkspaceInstance(workspace_id=inp.workspace_id, instance_id=instance_id, agent_url=url)

    async def _run_instance(self, inp: ProvisionWorkspaceInput) -> dict[str, Any]:
        signing_key = self._settings.token_signing_key.get_secret_value()
        if not signing_key:
            raise permanent("TokenSigningKeyMissing", "TENANTFLOW_TOKEN_SIGNING_KEY is not set on the worker")
        token = credentials.derive(credentials.REGISTRATION_TOKEN, signing_key, f"{inp.workspace_id}:registration")
        ttl = timedelta(seconds=inp.registration_timeout_seconds + 60)
        await self._workspaces.record_registration_token(inp.workspace_id, token, ttl)
        user_data = render_user_data(
            workspace_id=inp.workspace_id,
            workspace_name=inp.name,
            org_slug=inp.org_slug,
            role=inp.role,
            runtime=inp.runtime,
            model=inp.model,
            tier=inp.tier,
            platform_url=inp.platform_url,
            registration_token=token.secret,
            platform_credential_sha256=credentials.agent_access(signing_key, inp.workspace_id).hash,
            heartbeat_interval_seconds=self._settings.agent_heartbeat_interval_seconds,
            listen_port=self._settings.agent_port,
        )
        tags = instance_tags(inp.org_id, inp.org_slug, inp.workspace_id, inp.name)
        await self._ledger.attempting_create(instance_key(inp.workspace_id))
        try:
            launched = await self._call(
                "run_instances",
                ImageId=inp.ami_id,
                InstanceType=inp.instance_type,
                MinCount=1,
                MaxCount=1,
                SubnetId=inp.subnet_id,
                SecurityGroupIds=[inp.security_group_id],
                UserData=user_data,
                ClientToken=inp.workspace_id,
                MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": tags},
                    {"ResourceType": "volume", "Tags": tags},
                ],
            )
        except ApplicationError as err:
            if _is(err, "IdempotentParameterMismatch"):
                # This token already launched this workspace's instance, with parameters an earlier
                # attempt rendered differently (another release, changed settings): it is ours.
                async def by_token() -> dict[str, Any] | None:
                    found = await self._describe([{"Name": "client-token", "Values": [inp.workspace_id]}])
                    return next((i for i in found if i["State"]["Name"] in LIVE_STATES), None)

                ours = await self._settle(by_token, inp.workspace_id, f"the instance of {inp.workspace_id}")
                if ours is None:
                    raise
                return ours
            if _is(err, "IdempotentInstanceTerminated"):
                raise permanent(
                    "InstanceTerminated", f"the instance launched for {inp.workspace_id} was terminated"
                ) from err
            raise
        instance: dict[str, Any] = launched["Instances"][0]
        return instance

    # -- waiting --------------------------------------------------------------------------------

    async def _wait_for_state(
        self, workspace_id: str, instance_id: str, wanted: set[str], fail_on: set[str] | frozenset[str]
    ) -> str:
        return await wait_for_state(
            self._ec2, instance_id, wanted, fail_on, lambda: self._may_be_invisible(workspace_id)
        )

    @activity.defn
    async def wait_instance_running(self, ref: WorkspaceInstance) -> None:
        await self._wait_for_state(ref.workspace_id, ref.instance_id, {"running"}, GONE_STATES | {"stopped"})

    # -- termination ----------------------------------------------------------------------------

    async def _terminate(self, workspace_id: str, instance_id: str) -> None:
        """Terminate; a NotFound counts as gone only once the instance cannot be invisible."""
        await self._settle(
            lambda: call_ec2_if_found(self._ec2, NOT_FOUND, "terminate_instances", InstanceIds=[instance_id]),
            workspace_id,
            instance_id,
        )

    async def _terminate_workspace(self, workspace_id: str, known_ids: set[str]) -> list[str]:
        """Terminate every instance of the workspace (found by tag, or known from the workflow and
        the ledger) and wait until each is terminated."""
        key = instance_key(workspace_id)
        row = await self._ledger.get(key)
        ids = {i["InstanceId"] for i in await self._find(workspace_id, PRESENT_STATES)}
        ids |= known_ids | (
            {row["cloud_id"]} if row and row["cloud_id"] and row["status"] != LedgerStatus.deleted else set()
        )
        if not ids and row and row["status"] == LedgerStatus.pending:
            # A launch was attempted and nothing is on file (its answer lost): it may yet appear.
            async def by_tag() -> list[dict[str, Any]] | None:
                return await self._find(workspace_id, PRESENT_STATES) or None

            ids = {
                i["InstanceId"]
                for i in await self._settle(by_tag, workspace_id, f"the instance of {workspace_id}") or []
            }
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
        activity.logger.info(
            "instances terminated",
            extra={"org_slug": ref.org_slug, "workspace_id": ref.workspace_id, "instance_ids": ids},
        )
        return ids

    @activity.defn
    async def terminate_org_instances(self, org: OrgRef) -> list[str]:
        """Every instance tagged with the org or recorded in its ledger, whatever the workspace
        records say; waits until each is terminated."""
        by_workspace: dict[str, set[str]] = {}
        for inst in await self._describe([tag_filter(ORG_ID_TAG, org.org_id), state_filter(*PRESENT_STATES)]):
            by_workspace.setdefault(tags_of(inst).get(WORKSPACE_TAG, ""), set()).add(inst["InstanceId"])
        for row in await self._ledger.for_org(org.org_id):
            if row["kind"] == ResourceKind.ec2_instance and row["status"] != LedgerStatus.deleted:
                by_workspace.setdefault(name_of_key(row["business_key"]), set())
        untagged = by_workspace.pop("", set())
        ids = [
            i
            for workspace_id, known in sorted(by_workspace.items())
            for i in await self._terminate_workspace(workspace_id, known)
        ]
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
        return await self._change_power(req, "stop_instances", ("pending", "running", "stopping"), "stopped")

    @activity.defn
    async def start_workspace_instances(self, req: WorkspaceInstances) -> list[str]:
        return await self._change_power(
            req, "start_instances", ("stopped", "stopping", "pending", "running"), "running"
        )

    async def _change_power(
        self, req: WorkspaceInstances, call: str, states: tuple[str, ...], wanted: str
    ) -> list[str]:
        found: list[tuple[str, str]] = []
        for workspace_id in req.workspace_ids:
            found += [(workspace_id, i["InstanceId"]) for i in await self._find(workspace_id, states)]
        if found:
            await self._call(call, InstanceIds=[instance_id for _, instance_id in found])
            for workspace_id, instance_id in found:
                await self._wait_for_state(workspace_id, instance_id, {wanted}, GONE_STATES)
        return [instance_id for _, instance_id in found]
