"""Fixed-latency stand-ins for the external calls, registered under the real activities' names,
and the no-op activity the trivial baseline workflow runs.

``ext`` is the latency of an external call (Neon, EC2, the A2A card check), ``db`` the latency of
a stand-in for a platform-database write. ``StandIns.activities(real=...)`` swaps the stand-ins
into a list of real activities by name (keeping the real database activities when asked).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity
from temporalio.client import Client

from activities.instances import agent_url
from domain import credentials
from domain.onboard_org import (
    NeonOperationsInput,
    NetworkCheckInput,
    OrgFailure,
    OrgResources,
    SecurityGroup,
    SecurityGroupInput,
    TenantDatabase,
    TenantDatabaseInput,
)
from domain.provision_workspace import (
    AgentCardCheck,
    AgentRegistration,
    InstanceRef,
    ProvisionWorkspaceInput,
    WorkspaceFailure,
    WorkspaceInstance,
)
from domain.refs import OrgRef, WorkspaceRef
from domain.validate_org_network import NetworkVerdict, OrgNetwork

EXTERNAL = {
    "check_org_network",
    "validate_network",
    "ensure_tenant_database",
    "wait_for_neon_operations",
    "ensure_security_group",
    "launch_instance",
    "wait_instance_running",
    "check_agent_card",
    "terminate_instances",
}


class NoopInput(BaseModel):
    latency: float
    signal_workflow_id: str | None = None


class BaselineInput(BaseModel):
    latencies: list[float]
    # Index of the activity (launch) that sends the registration signal; the workflow waits for
    # the signal before the next activity, exactly where provisioning waits for registration.
    signal_after: int | None = None


@dataclass
class StandIns:
    client: Client
    ext: float = 0.05
    db: float = 0.005
    # Provisioning: send agent_registered from the launch stand-in (as a booted agent would).
    signal_on_launch: bool = True
    # Onboarding of slugs for which this is true parks in ensure_tenant_database.
    park: Callable[[str], bool] = lambda slug: False
    park_seconds: float = 50.0
    # Real workspace repo: the launch stand-in then mints a real one-time registration token.
    workspaces: Any = None
    tokens: dict[str, str] = field(default_factory=dict)
    token_ready: dict[str, asyncio.Event] = field(default_factory=dict)
    check_times: dict[str, float] = field(default_factory=dict)
    check_seen: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, table: dict, key: str) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    async def _signal(self, workflow_id: str) -> None:
        await self.client.get_workflow_handle(workflow_id).signal(
            "agent_registered", AgentRegistration(agent_url="http://10.0.0.1:8443")
        )

    # --- external calls ---------------------------------------------------------------------
    @activity.defn(name="check_org_network")
    async def check_org_network(self, network: OrgNetwork) -> NetworkVerdict:
        await asyncio.sleep(self.ext)
        return NetworkVerdict()

    @activity.defn(name="validate_network")
    async def validate_network(self, req: NetworkCheckInput) -> None:
        await asyncio.sleep(self.ext)

    @activity.defn(name="ensure_tenant_database")
    async def ensure_tenant_database(self, req: TenantDatabaseInput) -> TenantDatabase:
        await asyncio.sleep(self.park_seconds if self.park(req.slug) else self.ext)
        return TenantDatabase(
            mode=req.mode,
            name=f"tenant-{req.slug}",
            project_id="bench-project",
            branch_id=f"br-{req.org_id}",
            operation_ids=[f"op-{req.org_id}"],
        )

    @activity.defn(name="wait_for_neon_operations")
    async def wait_for_neon_operations(self, req: NeonOperationsInput) -> None:
        await asyncio.sleep(self.ext)

    @activity.defn(name="ensure_security_group")
    async def ensure_security_group(self, req: SecurityGroupInput) -> SecurityGroup:
        await asyncio.sleep(self.ext)
        return SecurityGroup(group_id=f"sg-{req.org_id[4:]}", name=f"tf-{req.slug}")

    @activity.defn(name="launch_instance")
    async def launch_instance(self, inp: ProvisionWorkspaceInput) -> WorkspaceInstance:
        await asyncio.sleep(self.ext)
        if self.workspaces is not None:
            token = credentials.mint(credentials.REGISTRATION_TOKEN)
            await self.workspaces.record_registration_token(
                inp.workspace_id, token, timedelta(seconds=inp.registration_timeout_seconds + 60)
            )
            self.tokens[inp.workspace_id] = token.secret
            self.event(self.token_ready, inp.workspace_id).set()
        elif self.signal_on_launch:
            await self._signal(activity.info().workflow_id)
        # The platform's address of the agent, as the real launch derives it (the check stand-in dials nothing).
        return WorkspaceInstance(
            workspace_id=inp.workspace_id, instance_id=f"i-{inp.workspace_id[3:]}", agent_url=agent_url("10.0.0.1", 443)
        )

    @activity.defn(name="wait_instance_running")
    async def wait_instance_running(self, ref: WorkspaceInstance) -> None:
        await asyncio.sleep(self.ext)

    @activity.defn(name="check_agent_card")
    async def check_agent_card(self, check: AgentCardCheck) -> None:
        self.check_times[check.workspace_id] = time.perf_counter()
        self.event(self.check_seen, check.workspace_id).set()
        await asyncio.sleep(self.ext)

    @activity.defn(name="terminate_instances")
    async def terminate_instances(self, ref: InstanceRef) -> list[str]:
        await asyncio.sleep(self.ext)
        return [ref.instance_id] if ref.instance_id else []

    # --- platform database (stand-ins only where the benchmark isolates orchestration) ---------
    @activity.defn(name="record_org_provisioning")
    async def record_org_provisioning(self, req: OrgRef) -> None:
        await asyncio.sleep(self.db)

    @activity.defn(name="record_org_resources")
    async def record_org_resources(self, req: OrgResources) -> None:
        await asyncio.sleep(self.db)

    @activity.defn(name="mark_org_active")
    async def mark_org_active(self, req: OrgRef) -> None:
        await asyncio.sleep(self.db)

    @activity.defn(name="mark_org_failed")
    async def mark_org_failed(self, req: OrgFailure) -> None:
        await asyncio.sleep(self.db)

    @activity.defn(name="confirm_workspace_slot")
    async def confirm_workspace_slot(self, ref: WorkspaceRef) -> None:
        await asyncio.sleep(self.db)

    @activity.defn(name="mark_workspace_running")
    async def mark_workspace_running(self, ref: WorkspaceRef) -> None:
        await asyncio.sleep(self.db)

    @activity.defn(name="mark_workspace_failed")
    async def mark_workspace_failed(self, failure: WorkspaceFailure) -> None:
        await asyncio.sleep(self.db)

    # --- the baseline's no-op -------------------------------------------------------------------
    @activity.defn(name="bench_noop")
    async def bench_noop(self, inp: NoopInput) -> None:
        await asyncio.sleep(inp.latency)
        if inp.signal_workflow_id:
            await self._signal(inp.signal_workflow_id)

    def all(self) -> list:
        return [
            self.check_org_network,
            self.validate_network,
            self.ensure_tenant_database,
            self.wait_for_neon_operations,
            self.ensure_security_group,
            self.launch_instance,
            self.wait_instance_running,
            self.check_agent_card,
            self.terminate_instances,
            self.record_org_provisioning,
            self.record_org_resources,
            self.mark_org_active,
            self.mark_org_failed,
            self.confirm_workspace_slot,
            self.mark_workspace_running,
            self.mark_workspace_failed,
            self.bench_noop,
        ]

    def activities(self, real: list | None = None) -> list:
        """All stand-ins, or ``real`` with its external activities replaced by stand-ins."""
        if real is None:
            return self.all()
        mine = {activity._Definition.must_from_callable(fn).name: fn for fn in self.all()}
        out = [
            mine[name] if (name := activity._Definition.must_from_callable(fn).name) in EXTERNAL else fn for fn in real
        ]
        return out + [self.bench_noop]


# Latency sequence of each real workflow's happy path, for the baseline (same count, same latencies).
def onboard_latencies(ext: float, db: float) -> list[float]:
    # validate, record, ensure db, record ids, wait ops, ensure sg, record id, activate
    return [ext, db, ext, db, ext, ext, db, db]


def provision_latencies(ext: float, db: float) -> tuple[list[float], int]:
    # slot, launch (signals), wait running, [registration], check card, activate
    return [db, ext, ext, ext, db], 2
