"""OnboardOrgWorkflow: a tenant database on Neon and a security group on AWS, or nothing at all.

validate -> record provisioning -> create database (and wait for Neon's operations) ->
create security group -> activate. A permanent failure undoes the created resources in reverse
order, stores the reason on the org and fails the workflow; so does a cancellation (the org entity
cancels onboarding when the org is deleted meanwhile), before the cascade starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ec2 import Ec2Activities
    from activities.neon import NeonActivities
    from activities.store import OrgStoreActivities
    from domain.onboard_org import (
        NeonOperationsInput,
        NetworkCheckInput,
        OnboardOrgInput,
        OnboardOrgResult,
        OrgFailure,
        OrgResources,
        SecurityGroupInput,
        TenantDatabaseInput,
    )
    from domain.refs import OrgRef
    from domain.status import OrgStatus
    from workflows.common import (
        CLEANUP_DEADLINE,
        FINISH_FIRST,
        Tracked,
        failure_reason,
        run_activity,
        stop_if_cancelled,
    )

STEPS = ["validate", "record", "create_database", "create_security_group", "activate"]


@workflow.defn
class OnboardOrgWorkflow(Tracked):
    def __init__(self) -> None:
        super().__init__("onboard", STEPS, OrgStatus.provisioning.value)

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
            await run_activity(
                Ec2Activities.validate_network,
                NetworkCheckInput(org_id=inp.org_id, slug=inp.slug, vpc_id=inp.vpc_id, subnet_ids=inp.subnet_ids),
                f"check {inp.vpc_id} and its subnets",
            )

            self._tracker.enter(step := "record")
            await run_activity(OrgStoreActivities.record_org_provisioning, org, "record org as provisioning")

            self._tracker.enter(step := "create_database")
            undo.append(("delete_database", lambda: self._delete_database(db_ref)))
            db = await run_activity(
                NeonActivities.ensure_tenant_database,
                db_ref,
                f"create Neon {inp.neon_mode}",
                cancellation_type=FINISH_FIRST,
            )
            stop_if_cancelled()
            result.neon_project_id, result.neon_branch_id = db.project_id, db.branch_id
            result.cost_warning = db.cost_warning
            await run_activity(OrgStoreActivities.record_org_resources, self._resources(result), "record database ids")
            if db.operation_ids:
                await run_activity(
                    NeonActivities.wait_for_neon_operations,
                    NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids),
                    "wait for Neon operations",
                    waits=True,
                )

            self._tracker.enter(step := "create_security_group")
            undo.append(
                (
                    "delete_security_group",
                    lambda: run_activity(
                        Ec2Activities.delete_security_group, sg_ref, "delete security group", deadline=CLEANUP_DEADLINE
                    ),
                )
            )
            sg = await run_activity(
                Ec2Activities.ensure_security_group, sg_ref, "create security group", cancellation_type=FINISH_FIRST
            )
            stop_if_cancelled()
            result.security_group_id = sg.group_id
            await run_activity(OrgStoreActivities.record_org_resources, self._resources(result), "record group id")

            self._tracker.enter(step := "activate")
            await run_activity(OrgStoreActivities.mark_org_active, org, "mark org active")
        except ActivityError as err:
            if workflow.cancellation_reason() is not None:  # a create cancelled mid-call, waited for
                await self._compensate(inp, undo, f"{step}: onboarding cancelled", step)
                raise asyncio.CancelledError() from err
            reason = failure_reason(step, err)
            await self._compensate(inp, undo, reason, step)
            raise ApplicationError(
                f"onboarding of {inp.slug} failed: {reason}", reason, type="OnboardingFailed", non_retryable=True
            ) from err
        except asyncio.CancelledError:
            # Preempted (the org is being deleted): undo what exists before the cascade starts.
            await self._compensate(inp, undo, f"{step}: onboarding cancelled", step)
            raise

        result.status = OrgStatus.active
        self._tracker.finish(OrgStatus.active.value)
        workflow.logger.info("org onboarded", extra={"org_slug": inp.slug})
        return result

    async def _compensate(
        self, inp: OnboardOrgInput, undo: list[tuple[str, Callable[[], Awaitable[Any]]]], reason: str, step: str
    ) -> None:
        workflow.logger.warning("onboarding failed, compensating", extra={"org_slug": inp.slug, "reason": reason})
        self._tracker.finish(OrgStatus.failed.value, reason, step=f"compensating after {step}")
        for name, action in reversed(undo):
            self._tracker.note(f"undo: `{name}`")
            await action()
        await run_activity(
            OrgStoreActivities.mark_org_failed,
            OrgFailure(org_id=inp.org_id, slug=inp.slug, reason=reason),
            "mark org failed",
            deadline=CLEANUP_DEADLINE,
        )
        self._tracker.finish(OrgStatus.failed.value, reason, step=step)

    async def _delete_database(self, ref: TenantDatabaseInput) -> None:
        ops = await run_activity(
            NeonActivities.delete_tenant_database, ref, "delete Neon database", deadline=CLEANUP_DEADLINE
        )
        if ops.operation_ids:
            await run_activity(
                NeonActivities.wait_for_neon_operations,
                ops,
                "wait for Neon deletion",
                deadline=CLEANUP_DEADLINE,
                waits=True,
            )

    @staticmethod
    def _resources(result: OnboardOrgResult) -> OrgResources:
        return OrgResources(
            org_id=result.org_id,
            slug=result.slug,
            neon_project_id=result.neon_project_id,
            neon_branch_id=result.neon_branch_id,
            security_group_id=result.security_group_id,
            cost_warning=result.cost_warning,
        )
