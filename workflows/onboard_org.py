"""OnboardOrgWorkflow: a tenant database on Neon and a security group on AWS, or nothing at all.

validate -> record provisioning -> create database (and wait for Neon's operations) ->
create security group -> activate. A permanent failure undoes the created resources in reverse
order, stores the reason on the org and fails the workflow.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ec2 import Ec2Activities
    from activities.neon import NeonActivities
    from activities.store import OrgStoreActivities
    from domain.models import (
        NeonOperationsInput,
        NetworkCheckInput,
        OnboardOrgInput,
        OnboardOrgResult,
        OrgFailure,
        OrgRef,
        OrgResources,
        OrgStatus,
        Progress,
        SecurityGroupInput,
        TenantDatabaseInput,
    )
    from workflows.common import CALL_TIMEOUT, CLEANUP_DEADLINE, RETRY, STEP_DEADLINE, ProgressTracker, failure_reason

STEPS = ["validate", "record", "create_database", "create_security_group", "activate"]


@workflow.defn
class OnboardOrgWorkflow:
    def __init__(self) -> None:
        self._tracker = ProgressTracker("onboard", STEPS, OrgStatus.provisioning.value)

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.progress

    async def _act(self, method: Callable, arg: Any, summary: str, *, deadline=STEP_DEADLINE, **options: Any) -> Any:
        return await workflow.execute_activity_method(
            method, arg, summary=summary, start_to_close_timeout=options.pop("start_to_close_timeout", CALL_TIMEOUT),
            schedule_to_close_timeout=deadline, retry_policy=RETRY, **options,
        )

    @workflow.run
    async def run(self, inp: OnboardOrgInput) -> OnboardOrgResult:
        org = OrgRef(org_id=inp.org_id, slug=inp.slug)
        db_ref = TenantDatabaseInput(org_id=inp.org_id, slug=inp.slug, mode=inp.neon_mode)
        sg_ref = SecurityGroupInput(org_id=inp.org_id, slug=inp.slug, vpc_id=inp.vpc_id)
        result = OnboardOrgResult(org_id=inp.org_id, slug=inp.slug, status=OrgStatus.provisioning)
        # Registered before each create, because a create can succeed and still report failure.
        undo: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        step = STEPS[0]
        try:
            self._tracker.enter(step := "validate")
            await self._act(Ec2Activities.validate_network, NetworkCheckInput(
                org_id=inp.org_id, slug=inp.slug, vpc_id=inp.vpc_id, subnet_ids=inp.subnet_ids),
                f"check {inp.vpc_id} and its subnets")

            self._tracker.enter(step := "record")
            await self._act(OrgStoreActivities.record_org_provisioning, org, "record org as provisioning")

            self._tracker.enter(step := "create_database")
            undo.append(("delete_database", lambda: self._delete_database(db_ref)))
            db = await self._act(NeonActivities.ensure_tenant_database, db_ref, f"create Neon {inp.neon_mode}")
            result.neon_project_id, result.neon_branch_id = db.project_id, db.branch_id
            await self._act(OrgStoreActivities.record_org_resources, self._resources(result), "record database ids")
            if db.operation_ids:
                await self._act(NeonActivities.wait_for_neon_operations,
                                NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids),
                                "wait for Neon operations", start_to_close_timeout=STEP_DEADLINE,
                                heartbeat_timeout=CALL_TIMEOUT / 2)

            self._tracker.enter(step := "create_security_group")
            undo.append(("delete_security_group", lambda: self._act(
                Ec2Activities.delete_security_group, sg_ref, "delete security group", deadline=CLEANUP_DEADLINE)))
            sg = await self._act(Ec2Activities.ensure_security_group, sg_ref, "create security group :443")
            result.security_group_id = sg.group_id
            await self._act(OrgStoreActivities.record_org_resources, self._resources(result), "record group id")

            self._tracker.enter(step := "activate")
            await self._act(OrgStoreActivities.mark_org_active, org, "mark org active")
        except ActivityError as err:
            reason = failure_reason(step, err)
            workflow.logger.warning("onboarding failed, compensating", extra={"org_slug": inp.slug, "reason": reason})
            self._tracker.finish(OrgStatus.failed.value, reason, step=f"compensating after {step}")
            for name, action in reversed(undo):
                self._tracker.note(f"undo: `{name}`")
                await action()
            await self._act(OrgStoreActivities.mark_org_failed, OrgFailure(org_id=inp.org_id, slug=inp.slug, reason=reason),
                            "mark org failed", deadline=CLEANUP_DEADLINE)
            self._tracker.finish(OrgStatus.failed.value, reason, step=step)
            raise ApplicationError(f"onboarding of {inp.slug} failed: {reason}", type="OnboardingFailed",
                                   non_retryable=True) from err

        result.status = OrgStatus.active
        self._tracker.finish(OrgStatus.active.value)
        workflow.logger.info("org onboarded", extra={"org_slug": inp.slug})
        return result

    async def _delete_database(self, ref: TenantDatabaseInput) -> None:
        ops = await self._act(NeonActivities.delete_tenant_database, ref, "delete Neon database",
                              deadline=CLEANUP_DEADLINE)
        if ops.operation_ids:
            await self._act(NeonActivities.wait_for_neon_operations, ops, "wait for Neon deletion",
                            deadline=CLEANUP_DEADLINE, start_to_close_timeout=STEP_DEADLINE,
                            heartbeat_timeout=CALL_TIMEOUT / 2)

    @staticmethod
    def _resources(result: OnboardOrgResult) -> OrgResources:
        return OrgResources(org_id=result.org_id, slug=result.slug, neon_project_id=result.neon_project_id,
                            neon_branch_id=result.neon_branch_id, security_group_id=result.security_group_id)
