"""SuspendOrgWorkflow and ResumeOrgWorkflow.

Suspend: freeze workspace creation -> revoke every org API key -> cancel in-flight provisioning
(each cancelled workflow terminates its own half-launched instance) -> stop running instances
only when asked. Data and instances stay. Resume unfreezes the org and starts stopped instances;
the operator then mints a new key.
"""

from __future__ import annotations

from typing import Any, Callable

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
    from workflows.common import CALL_TIMEOUT, RETRY, STEP_DEADLINE, OperatorGate, ProgressTracker
    from workflows.deprovision_workspace import provision_workflow_id

SUSPEND_STEPS = ["freeze", "revoke_keys", "cancel_provisioning", "stop_instances"]
RESUME_STEPS = ["unfreeze", "start_instances"]


async def act(method: Callable, arg: Any, summary: str, **options: Any) -> Any:
    options.setdefault("start_to_close_timeout", CALL_TIMEOUT)
    options.setdefault("schedule_to_close_timeout", STEP_DEADLINE)
    return await workflow.execute_activity_method(method, arg, summary=summary, retry_policy=RETRY, **options)


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
        await step("freeze", lambda: act(OrgLifecycleActivities.set_org_status, OrgStatusChange(
            org_id=inp.org_id, slug=inp.slug, status=OrgStatus.suspended.value, reason=inp.reason,
            only_from=[OrgStatus.active.value, OrgStatus.suspended.value]), "freeze workspace creation"))
        await step("revoke_keys", lambda: act(OrgLifecycleActivities.revoke_org_keys, org,
                                              "revoke every org API key"))
        in_flight = await step("cancel_provisioning", lambda: act(
            OrgLifecycleActivities.list_org_workspaces,
            WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.provisioning.value]), "find in-flight"))
        for workspace_id in in_flight:
            await step("cancel_provisioning", lambda ws=workspace_id: act(
                WorkflowControlActivities.cancel_and_wait, WorkflowToStop(workflow_id=provision_workflow_id(ws)),
                f"cancel provisioning of {ws}", start_to_close_timeout=STEP_DEADLINE,
                heartbeat_timeout=CALL_TIMEOUT / 2))
        if inp.stop_instances:
            running = await step("stop_instances", lambda: act(
                OrgLifecycleActivities.list_org_workspaces,
                WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.running.value]), "find running"))
            await step("stop_instances", lambda: act(
                InstanceActivities.stop_workspace_instances,
                WorkspaceInstances(org_id=inp.org_id, org_slug=inp.slug, workspace_ids=running),
                "stop instances and wait", start_to_close_timeout=STEP_DEADLINE, heartbeat_timeout=CALL_TIMEOUT / 2))
            await step("stop_instances", lambda: act(OrgLifecycleActivities.set_workspaces_status, OrgStatusChange(
                org_id=inp.org_id, slug=inp.slug, status=WorkspaceStatus.stopped.value,
                only_from=[WorkspaceStatus.running.value]), "mark workspaces stopped"))
        await act(OrgLifecycleActivities.audit_step, AuditEntry(
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
        await step("unfreeze", lambda: act(OrgLifecycleActivities.set_org_status, OrgStatusChange(
            org_id=inp.org_id, slug=inp.slug, status=OrgStatus.active.value,
            only_from=[OrgStatus.suspended.value]), "unfreeze the org"))
        stopped = await step("start_instances", lambda: act(
            OrgLifecycleActivities.list_org_workspaces,
            WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.stopped.value]), "find stopped"))
        if stopped:
            await step("start_instances", lambda: act(
                InstanceActivities.start_workspace_instances,
                WorkspaceInstances(org_id=inp.org_id, org_slug=inp.slug, workspace_ids=stopped),
                "start instances and wait", start_to_close_timeout=STEP_DEADLINE, heartbeat_timeout=CALL_TIMEOUT / 2))
            await step("start_instances", lambda: act(OrgLifecycleActivities.set_workspaces_status, OrgStatusChange(
                org_id=inp.org_id, slug=inp.slug, status=WorkspaceStatus.running.value,
                only_from=[WorkspaceStatus.stopped.value]), "mark workspaces running"))
        self._tracker.finish(OrgStatus.active.value)
