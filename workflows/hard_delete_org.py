"""HardDeleteOrgWorkflow: the only way an org is deleted.

stop new work -> cancel in-flight provisioning -> terminate every instance and wait -> delete the
security group (DependencyViolation is retried while instances drain) -> delete the Neon branch or
project -> revoke keys and tokens -> purge the rows and write the receipt. Every step is
idempotent and audited; a step that fails for good parks the workflow until an operator signals
``retry`` or ``abandon``, so a delete either finishes or stops on a named step. The input carries
everything the cascade needs, so a re-run or a Reset works after the org row is gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.ec2 import Ec2Activities
    from activities.instances import InstanceActivities
    from activities.lifecycle import OrgLifecycleActivities
    from activities.neon import NeonActivities
    from domain.hard_delete_org import HardDeleteOrgInput, PurgeReceipt
    from domain.onboard_org import SecurityGroupInput, TenantDatabaseInput
    from domain.refs import AuditEntry, OrgRef, OrgStatusChange, WorkspaceQuery
    from domain.status import OrgStatus, WorkspaceStatus
    from workflows.common import Gated, cancel_provisioning, run_activity

T = TypeVar("T")
STEPS = [
    "stop_new_work",
    "cancel_in_flight",
    "terminate_instances",
    "delete_security_group",
    "delete_database",
    "revoke_credentials",
    "purge_records",
]


@workflow.defn
class HardDeleteOrgWorkflow(Gated):
    def __init__(self) -> None:
        super().__init__("hard-delete", STEPS, OrgStatus.deleting.value)
        self._inp: HardDeleteOrgInput | None = None

    async def _audited(
        self, step: str, action: Callable[[], Awaitable[T]], detail: Callable[[T], dict[str, Any]] | None = None
    ) -> T:
        inp = self._inp
        assert inp is not None

        async def on_parked(name: str, reason: str) -> None:
            await run_activity(
                OrgLifecycleActivities.audit_step,
                AuditEntry(
                    org_id=inp.org_id,
                    slug=inp.slug,
                    action=f"org.delete.{name}",
                    outcome="parked",
                    detail={"reason": reason},
                ),
                "audit parked step",
            )

        result = await self._gate.run_step(step, action, on_parked)
        await run_activity(
            OrgLifecycleActivities.audit_step,
            AuditEntry(
                org_id=inp.org_id,
                slug=inp.slug,
                action=f"org.delete.{step}",
                outcome="ok",
                detail=detail(result) if detail else {},
            ),
            f"audit {step}",
        )
        return result

    @workflow.run
    async def run(self, inp: HardDeleteOrgInput) -> PurgeReceipt:
        self._inp = inp
        org = OrgRef(org_id=inp.org_id, slug=inp.slug)
        await self._audited(
            "stop_new_work",
            lambda: run_activity(
                OrgLifecycleActivities.set_org_status,
                OrgStatusChange(org_id=inp.org_id, slug=inp.slug, status=OrgStatus.deleting),
                "mark org deleting",
            ),
            lambda before: {"previous_status": before},
        )

        in_flight = await self._audited(
            "cancel_in_flight",
            lambda: run_activity(
                OrgLifecycleActivities.list_org_workspaces,
                WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.provisioning]),
                "find in-flight",
            ),
            lambda ids: {"workspaces": ids},
        )
        for workspace_id in in_flight:
            await self._gate.run_step("cancel_in_flight", partial(cancel_provisioning, workspace_id))

        await self._audited(
            "terminate_instances",
            lambda: run_activity(
                InstanceActivities.terminate_org_instances, org, "terminate every instance and wait", waits=True
            ),
            lambda ids: {"instance_ids": ids},
        )
        await self._audited(
            "delete_security_group",
            lambda: run_activity(
                Ec2Activities.delete_security_group,
                SecurityGroupInput(org_id=inp.org_id, slug=inp.slug, vpc_id=inp.vpc_id),
                "delete security group",
            ),
        )
        db = TenantDatabaseInput(org_id=inp.org_id, slug=inp.slug, mode=inp.neon_mode)
        ops = await self._audited(
            "delete_database",
            lambda: run_activity(NeonActivities.delete_tenant_database, db, f"delete Neon {inp.neon_mode}"),
        )
        if ops.operation_ids:
            await self._gate.run_step(
                "delete_database",
                lambda: run_activity(
                    NeonActivities.wait_for_neon_operations, ops, "wait for Neon deletion", waits=True
                ),
            )
        await self._audited(
            "revoke_credentials",
            lambda: run_activity(OrgLifecycleActivities.revoke_org_credentials, org, "revoke keys and tokens"),
            lambda keys: {"keys_revoked": keys},
        )
        receipt = await self._audited(
            "purge_records",
            lambda: run_activity(OrgLifecycleActivities.purge_org, org, "purge rows, write receipt"),
            lambda r: {"resources": len(r.resources), "workspaces": len(r.workspaces)},
        )
        self._tracker.finish(OrgStatus.deleted.value)
        workflow.logger.info("org deleted", extra={"org_slug": inp.slug, "resources": len(receipt.resources)})
        return receipt
