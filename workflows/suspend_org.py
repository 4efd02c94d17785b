"""SuspendOrgWorkflow and ResumeOrgWorkflow.

Suspend: freeze workspace creation -> revoke every org API key -> cancel in-flight provisioning
(each cancelled workflow terminates its own half-launched instance) -> stop running instances
only when asked. Data and instances stay. Resume unfreezes the org and starts stopped instances;
the operator then mints a new key.
"""

from __future__ import annotations

from functools import partial

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.instances import InstanceActivities
    from activities.lifecycle import OrgLifecycleActivities
    from domain.refs import (
        AuditEntry,
        OrgRef,
        OrgStatusChange,
        WorkspaceQuery,
        WorkspacesStatusChange,
    )
    from domain.status import OrgStatus, WorkspaceStatus
    from domain.suspend_org import ResumeOrgInput, SuspendOrgInput, WorkspaceInstances
    from workflows.common import FINISH_FIRST, Gated, cancel_provisioning, run_activity

SUSPEND_STEPS = ["freeze", "revoke_keys", "cancel_provisioning", "stop_instances"]
RESUME_STEPS = ["unfreeze", "start_instances"]


@workflow.defn
class SuspendOrgWorkflow(Gated):
    def __init__(self) -> None:
        super().__init__("suspend", SUSPEND_STEPS, OrgStatus.suspended.value)

    @workflow.run
    async def run(self, inp: SuspendOrgInput) -> None:
        org = OrgRef(org_id=inp.org_id, slug=inp.slug)
        step = self._gate.run_step
        await step(
            "freeze",
            lambda: run_activity(
                OrgLifecycleActivities.set_org_status,
                OrgStatusChange(
                    org_id=inp.org_id,
                    slug=inp.slug,
                    status=OrgStatus.suspended,
                    reason=inp.reason,
                    # Run by the org entity, the org is already "suspending" (frozen): nothing to change.
                    only_from=[OrgStatus.active],
                ),
                "freeze workspace creation",
            ),
        )
        await step(
            "revoke_keys", lambda: run_activity(OrgLifecycleActivities.revoke_org_keys, org, "revoke every org API key")
        )
        in_flight = await step(
            "cancel_provisioning",
            lambda: run_activity(
                OrgLifecycleActivities.list_org_workspaces,
                WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.provisioning]),
                "find in-flight",
            ),
        )
        for workspace_id in in_flight:
            await step("cancel_provisioning", partial(cancel_provisioning, workspace_id))
        if inp.stop_instances:
            running = await step(
                "stop_instances",
                lambda: run_activity(
                    OrgLifecycleActivities.list_org_workspaces,
                    WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.running]),
                    "find running",
                ),
            )
            await step(
                "stop_instances",
                lambda: run_activity(
                    InstanceActivities.stop_workspace_instances,
                    WorkspaceInstances(org_id=inp.org_id, org_slug=inp.slug, workspace_ids=running),
                    "stop instances and wait",
                    cancellation_type=FINISH_FIRST,
                    waits=True,
                ),
            )
            await step(
                "stop_instances",
                lambda: run_activity(
                    OrgLifecycleActivities.set_workspaces_status,
                    WorkspacesStatusChange(
                        org_id=inp.org_id,
                        slug=inp.slug,
                        status=WorkspaceStatus.stopped,
                        only_from=[WorkspaceStatus.running],
                    ),
                    "mark workspaces stopped",
                ),
            )
        await run_activity(
            OrgLifecycleActivities.audit_step,
            AuditEntry(
                org_id=inp.org_id,
                slug=inp.slug,
                action="org.suspend.done",
                detail={"cancelled": in_flight, "stopped_instances": inp.stop_instances},
            ),
            "audit",
        )
        self._tracker.finish(OrgStatus.suspended.value)


@workflow.defn
class ResumeOrgWorkflow(Gated):
    def __init__(self) -> None:
        super().__init__("resume", RESUME_STEPS, OrgStatus.active.value)

    @workflow.run
    async def run(self, inp: ResumeOrgInput) -> None:
        step = self._gate.run_step
        await step(
            "unfreeze",
            lambda: run_activity(
                OrgLifecycleActivities.set_org_status,
                OrgStatusChange(
                    org_id=inp.org_id,
                    slug=inp.slug,
                    status=OrgStatus.active,
                    # Run by the org entity, the org stays "resuming" (frozen) until its instances run.
                    only_from=[OrgStatus.suspended],
                ),
                "unfreeze the org",
            ),
        )
        stopped = await step(
            "start_instances",
            lambda: run_activity(
                OrgLifecycleActivities.list_org_workspaces,
                WorkspaceQuery(org_id=inp.org_id, statuses=[WorkspaceStatus.stopped]),
                "find stopped",
            ),
        )
        if stopped:
            await step(
                "start_instances",
                lambda: run_activity(
                    InstanceActivities.start_workspace_instances,
                    WorkspaceInstances(org_id=inp.org_id, org_slug=inp.slug, workspace_ids=stopped),
                    "start instances and wait",
                    cancellation_type=FINISH_FIRST,
                    waits=True,
                ),
            )
            await step(
                "start_instances",
                lambda: run_activity(
                    OrgLifecycleActivities.set_workspaces_status,
                    WorkspacesStatusChange(
                        org_id=inp.org_id,
                        slug=inp.slug,
                        status=WorkspaceStatus.running,
                        only_from=[WorkspaceStatus.stopped],
                    ),
                    "mark workspaces running",
                ),
            )
        self._tracker.finish(OrgStatus.active.value)
