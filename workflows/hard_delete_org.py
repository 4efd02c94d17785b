"""HardDeleteOrgWorkflow: the only way an org is deleted.

stop new work -> cancel in-flight provisioning -> terminate every instance and wait -> delete the
security group (DependencyViolation is retried while instances drain) -> delete the Neon branch or
project -> revoke keys and tokens -> purge the rows and write the receipt. Every step is
idempotent and audited; a step that fails for good parks the workflow until an operator signals
``retry`` or ``abandon``, so a delete either finishes or stops on a named step. The input carries
everything the cascade needs, so a re-run or a Reset works after the org row is gone.
"""

from __future__ import annotations

from typing import Any, Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.ec2 import Ec2Activities
    from activities.instances import InstanceActivities
    from activities.lifecycle import OrgLifecycleActivities
    from activities.neon import NeonActivities
    from activities.workflow_control import WorkflowControlActivities
    from domain.models import (
        AuditEntry,
        HardDeleteOrgInput,
        OrgRef,
        OrgStatus,
        OrgStatusChange,
        Progress,
        PurgeReceipt,
        SecurityGroupInput,
        TenantDatabaseInput,
        WorkflowToStop,
        WorkspaceQuery,
        WorkspaceStatus,
    )
    from workflows.common import WAITING, OperatorGate, ProgressTracker, run_activity
    from workflows.deprovision_workspace import provision_workflow_id

STEPS = ["stop_new_work", "cancel_in_flight", "terminate_instances", "delete_security_group",
         "delete_database", "revoke_credentials", "purge_records"]


def delete_workflow_id(org_id: str) -> str:
    return f"org-delete:{org_id}"


@workflow.defn
class HardDeleteOrgWorkflow:
    def __init__(self) -> None:
        self._tracker = ProgressTracker("hard-delete", STEPS, OrgStatus.deleting.value)
        self._gate = OperatorGate(self._tracker)
        self._inp: HardDeleteOrgInput | None = None

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.progress

    @workflow.signal
    def retry(self) -> None:
        """Run the parked step again (after fixing its cause)."""
        self._gate.decide("retry")

    @workflow.signal
    def abandon(self) -> None:
        """Stop the teardown on the parked step; the workflow fails and can be re-run later."""
        self._gate.decide("abandon")

    async def _audited(self, step: str, action: Callable, detail: Callable[[Any], dict] | None = None) -> Any:
        inp = self._inp
        assert inp is not None

        async def on_parked(name: str, reason: str) -> None:
            await run_activity(OrgLifecycleActivities.audit_step, AuditEntry(
                org_id=inp.org_id, slug=inp.slug, action=f"org.delete.{name}", outcome="parked",
                detail={"reason": reason}), "audit parked step")

        result = await self._gate.run_step(step, action, on_parked)
        await run_activity(OrgLifecycleActivities.audit_step, AuditEntry(
            org_id=inp.org_id, slug=inp.slug, action=f"org.delete.{step}", outcome="ok",
            detail=detail(result) if detail else {}), f"audit {step}")
        return result

    @workflow.run
    async def run(self, inp: HardDeleteOrgInput) -> PurgeReceipt:
        self._inp = inp
        org = OrgRef(org_id=inp.org_id, slug=inp.slug)
        await self._audited("stop_new_work", lambda: run_activity(
            OrgLifecycleActivities.set_org_status,
            OrgStatusChange(org_id=inp.org_id, slug=inp.slug, status=OrgStatus.deleting.value), "mark org deleting"),
            lambda before: {"previous_status": before})

        in_flight = await self._audited("cancel_in_flight", lambda: run_activity(
            OrgLifecycleActivities.list_org_workspaces,
            WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.provisioning.value]), "find in-flight"),
            lambda ids: {"workspaces": ids})
        for workspace_id in in_flight:
            await self._gate.run_step("cancel_in_flight", lambda ws=workspace_id: run_activity(
                WorkflowControlActivities.cancel_and_wait, WorkflowToStop(workflow_id=provision_workflow_id(ws)),
                f"cancel provisioning of {ws}", **WAITING))

        await self._audited("terminate_instances", lambda: run_activity(
            InstanceActivities.terminate_org_instances, org, "terminate every instance and wait", **WAITING),
            lambda ids: {"instance_ids": ids})
        await self._audited("delete_security_group", lambda: run_activity(
            Ec2Activities.delete_security_group, SecurityGroupInput(org_id=inp.org_id, slug=inp.slug,
                                                                    vpc_id=inp.vpc_id), "delete security group"))
        db = TenantDatabaseInput(org_id=inp.org_id, slug=inp.slug, mode=inp.neon_mode)
        ops = await self._audited("delete_database", lambda: run_activity(
            NeonActivities.delete_tenant_database, db, f"delete Neon {inp.neon_mode}"))
        if ops.operation_ids:
            await self._gate.run_step("delete_database", lambda: run_activity(
                NeonActivities.wait_for_neon_operations, ops, "wait for Neon deletion", **WAITING))
        await self._audited("revoke_credentials", lambda: run_activity(
            OrgLifecycleActivities.revoke_org_credentials, org, "revoke keys and tokens"),
            lambda keys: {"keys_revoked": keys})
        receipt = await self._audited("purge_records", lambda: run_activity(
            OrgLifecycleActivities.purge_org, org, "purge rows, write receipt"),
            lambda r: {"resources": len(r.resources), "workspaces": len(r.workspaces)})
        self._tracker.finish(OrgStatus.deleted.value)
        workflow.logger.info("org deleted", extra={"org_slug": inp.slug, "resources": len(receipt.resources)})
        return receipt
