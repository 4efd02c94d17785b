"""SuspendOrgWorkflow and ResumeOrgWorkflow.

Suspend: freeze workspace creation -> revoke every org API key -> cancel in-flight provisioning
(each cancelled workflow terminates its own half-launched instance) -> stop running instances
only when asked. Data and instances stay. Resume unfreezes the org and starts stopped instances;
the operator then mints a new key.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.instances import InstanceActivities
    from activities.lifecycle import OrgLifecycleActivities
    from activities.workflow_control import WorkflowControlActivities
    from domain.models import (
        AuditEntry,
        OrgRef,
        OrgStatus,
        OrgStatusChange,
        Progress,
        ResumeOrgInput,
        SuspendOrgInput,
        WorkflowToStop,
        WorkspaceInstances,
        WorkspaceQuery,
        WorkspaceStatus,
    )
    from workflows.common import FINISH_FIRST, WAITING, OperatorGate, ProgressTracker, run_activity
    from workflows.deprovision_workspace import provision_workflow_id

SUSPEND_STEPS = ["freeze", "revoke_keys", "cancel_provisioning", "stop_instances"]
RESUME_STEPS = ["unfreeze", "start_instances"]


@workflow.defn
class SuspendOrgWorkflow:
    def __init__(self) -> None:
        self._tracker = ProgressTracker("suspend", SUSPEND_STEPS, OrgStatus.suspended.value)
        self._gate = OperatorGate(self._tracker)

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.progress

    @workflow.signal
    def retry(self) -> None:
        self._gate.decide("retry")

    @workflow.signal
    def abandon(self) -> None:
        self._gate.decide("abandon")

    @workflow.run
    async def run(self, inp: SuspendOrgInput) -> None:
        org = OrgRef(org_id=inp.org_id, slug=inp.slug)
        step = self._gate.run_step
        await step("freeze", lambda: run_activity(OrgLifecycleActivities.set_org_status, OrgStatusChange(
            org_id=inp.org_id, slug=inp.slug, status=OrgStatus.suspended.value, reason=inp.reason,
            # Run by the org entity, the org is already "suspending" (frozen): nothing to change.
            only_from=[OrgStatus.active.value]), "freeze workspace creation"))
        await step("revoke_keys", lambda: run_activity(OrgLifecycleActivities.revoke_org_keys, org,
                                              "revoke every org API key"))
        in_flight = await step("cancel_provisioning", lambda: run_activity(
            OrgLifecycleActivities.list_org_workspaces,
            WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.provisioning.value]), "find in-flight"))
        for workspace_id in in_flight:
            await step("cancel_provisioning", lambda ws=workspace_id: run_activity(
                WorkflowControlActivities.cancel_and_wait, WorkflowToStop(workflow_id=provision_workflow_id(ws)),
                f"cancel provisioning of {ws}", **WAITING))
        if inp.stop_instances:
            running = await step("stop_instances", lambda: run_activity(
                OrgLifecycleActivities.list_org_workspaces,
                WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.running.value]), "find running"))
            await step("stop_instances", lambda: run_activity(
                InstanceActivities.stop_workspace_instances,
                WorkspaceInstances(org_id=inp.org_id, org_slug=inp.slug, workspace_ids=running),
                "stop instances and wait", cancellation_type=FINISH_FIRST, **WAITING))
            await step("stop_instances", lambda: run_activity(
                OrgLifecycleActivities.set_workspaces_status,
                OrgStatusChange(org_id=inp.org_id, slug=inp.slug, status=WorkspaceStatus.stopped.value,
                                only_from=[WorkspaceStatus.running.value]), "mark workspaces stopped"))
        await run_activity(OrgLifecycleActivities.audit_step, AuditEntry(
            org_id=inp.org_id, slug=inp.slug, action="org.suspend.done",
            detail={"cancelled": in_flight, "stopped_instances": inp.stop_instances}), "audit")
        self._tracker.finish(OrgStatus.suspended.value)


@workflow.defn
class ResumeOrgWorkflow:
    def __init__(self) -> None:
        self._tracker = ProgressTracker("resume", RESUME_STEPS, OrgStatus.active.value)
        self._gate = OperatorGate(self._tracker)

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.progress

    @workflow.signal
    def retry(self) -> None:
        self._gate.decide("retry")

    @workflow.signal
    def abandon(self) -> None:
        self._gate.decide("abandon")

    @workflow.run
    async def run(self, inp: ResumeOrgInput) -> None:
        step = self._gate.run_step
        await step("unfreeze", lambda: run_activity(OrgLifecycleActivities.set_org_status, OrgStatusChange(
            org_id=inp.org_id, slug=inp.slug, status=OrgStatus.active.value,
            # Run by the org entity, the org stays "resuming" (frozen) until its instances run.
            only_from=[OrgStatus.suspended.value]), "unfreeze the org"))
        stopped = await step("start_instances", lambda: run_activity(
            OrgLifecycleActivities.list_org_workspaces,
            WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.stopped.value]), "find stopped"))
        if stopped:
            await step("start_instances", lambda: run_activity(
                InstanceActivities.start_workspace_instances,
                WorkspaceInstances(org_id=inp.org_id, org_slug=inp.slug, workspace_ids=stopped),
                "start instances and wait", cancellation_type=FINISH_FIRST, **WAITING))
            await step("start_instances", lambda: run_activity(
                OrgLifecycleActivities.set_workspaces_status,
                OrgStatusChange(org_id=inp.org_id, slug=inp.slug, status=WorkspaceStatus.running.value,
                                only_from=[WorkspaceStatus.stopped.value]), "mark workspaces running"))
        self._tracker.finish(OrgStatus.active.value)
