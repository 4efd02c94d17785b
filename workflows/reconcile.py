"""ReconcileWorkflow: find orphaned cloud resources and ledger drift; delete orphans only on request.

inventory (AWS and Neon, in parallel) -> read records -> compare -> delete (only with ``delete``
and within both caps: instances, then security groups, then Neon) -> store the report.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import (
        CloudResource,
        DeleteBudget,
        Deletion,
        Finding,
        ReconcileActivities,
        ReconcileInput,
        ReconcileReport,
        Records,
        RecordsRequest,
        orphan_reason,
    )
    from domain.models import Progress
    from workflows.common import CLEANUP_DEADLINE, WAITING, ProgressTracker, failure_reason, run_activity

STEPS = ["inventory", "read_records", "compare", "delete", "store_report"]
# Instances first (they hold the security groups), Neon last. Each phase finishes before the next.
DELETE_PHASES = [("ec2_instance",), ("security_group",), ("neon_branch", "neon_project")]
_KINDS = {"ec2_instance", "security_group", "neon_branch", "neon_project"}


def find_orphans(candidates: list[CloudResource], records: Records) -> list[Finding]:
    ledger = {e.business_key: e for e in records.ledger}
    workspaces = frozenset(records.workspace_ids)
    findings = []
    for resource in candidates:
        reason = orphan_reason(resource, records.orgs, ledger, workspaces)
        if reason is not None:
            entry = ledger.get(resource.business_key or "")
            findings.append(Finding.orphan(resource, reason, entry.org_slug if entry else None))
    return findings


def find_drift(records: Records, existing: list[CloudResource], org_ids: set[str] | None, *,
               recorded_before: datetime) -> list[Finding]:
    """Ledger rows saying ``created`` for resources that do not exist. Rows changed after the
    inventory began are left out: their resource may have been created after it was listed."""
    present = {(r.kind, r.cloud_id) for r in existing}
    drift = []
    for entry in records.ledger:
        if (entry.status != "created" or entry.kind not in _KINDS or entry.updated_at >= recorded_before
                or (org_ids is not None and entry.org_id not in org_ids) or (entry.kind, entry.cloud_id) in present):
            continue
        key_name = entry.business_key.split(":", 1)[1]
        is_instance = entry.kind == "ec2_instance"
        drift.append(Finding(problem="drift", reason="missing_in_cloud", kind=entry.kind, cloud_id=entry.cloud_id,
                             business_key=entry.business_key, org_id=entry.org_id, org_slug=entry.org_slug,
                             name=None if is_instance else key_name, workspace_id=key_name if is_instance else None))
    return drift


@workflow.defn
class ReconcileWorkflow:
    def __init__(self) -> None:
        self._tracker = ProgressTracker("reconcile", STEPS, "running")
        self._report: ReconcileReport | None = None

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.progress

    @workflow.query
    def report(self) -> ReconcileReport | None:
        """The findings so far (None until the comparison is done)."""
        return self._report

    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        info = workflow.info()
        started = workflow.now()
        scope = set(inp.org_ids) if inp.org_ids is not None else None

        self._enter("inventory")
        aws, neon = await asyncio.gather(
            run_activity(ReconcileActivities.inventory_aws, summary="list managed EC2 instances and security groups"),
            run_activity(ReconcileActivities.inventory_neon, summary="list tf- Neon branches and projects"),
        )
        existing: list[CloudResource] = aws.resources + neon.resources
        candidates = [r for r in existing if scope is None or r.org_id in scope]

        self._enter("read_records")
        records = await run_activity(ReconcileActivities.read_records, RecordsRequest(
            business_keys=sorted({r.business_key for r in candidates if r.business_key}),
            org_ids=sorted({r.org_id for r in candidates if r.org_id}),
            workspace_ids=sorted({r.workspace_id for r in candidates if r.workspace_id}),
            created_in_orgs=inp.org_ids,
        ), summary="read the ledger, orgs and workspaces")

        self._enter("compare")
        orphans = find_orphans(candidates, records)
        budget = DeleteBudget(orphans=len(orphans), fleet_size=len(existing), max_deletes=inp.max_deletes,
                              max_delete_fraction=inp.max_delete_fraction)
        report = self._report = ReconcileReport(
            workflow_id=info.workflow_id, run_id=info.run_id, started_at=started, dry_run=not inp.delete,
            org_ids=inp.org_ids, budget=budget, cap_exceeded=inp.delete and not budget.within_caps,
            findings=orphans + find_drift(records, existing, scope, recorded_before=started),
        )
        self._tracker.note(self._summary())

        if report.cap_exceeded:
            # A reconciler that deletes half the fleet because a table was emptied is worse than a leak.
            workflow.logger.warning("reconcile deletion refused: caps exceeded", extra=budget.model_dump())
        elif inp.delete and orphans:
            self._enter("delete")
            for kinds in DELETE_PHASES:
                batch = [o for o in orphans if o.kind in kinds]
                if kinds[0].startswith("neon"):
                    # Neon locks a project while an operation runs: one deletion at a time.
                    report.deleted += [await self._delete(o) for o in batch]
                else:
                    report.deleted += await asyncio.gather(*(self._delete(o) for o in batch))
                self._enter("delete")

        report.finished_at = workflow.now()
        self._enter("store_report")
        report = self._report = await run_activity(ReconcileActivities.save_report, report, summary="store the report")
        self._tracker.finish("cap_exceeded" if report.cap_exceeded else "done")
        self._tracker.note(self._summary())
        workflow.logger.info("reconcile finished", extra={
            "report_id": report.id, "dry_run": report.dry_run, "orphans": len(orphans), "drift": len(report.drift),
            "deleted": sum(d.outcome in ("deleted", "already_gone") for d in report.deleted),
            "failed": sum(d.outcome == "failed" for d in report.deleted), "cap_exceeded": report.cap_exceeded,
            "fleet_size": budget.fleet_size})
        return report

    async def _delete(self, orphan: Finding) -> Deletion:
        try:
            return await run_activity(
                ReconcileActivities.delete_orphan, orphan,
                summary=f"delete orphan {orphan.kind} {orphan.cloud_id} ({orphan.reason})",
                deadline=CLEANUP_DEADLINE, **WAITING,
            )
        except ActivityError as err:
            reason = failure_reason(f"delete {orphan.kind}", err)
            workflow.logger.warning("orphan deletion failed", extra={"cloud_id": orphan.cloud_id, "reason": reason})
            return Deletion(kind=orphan.kind, cloud_id=orphan.cloud_id or "", org_id=orphan.org_id, outcome="failed",
                            error=reason)

    def _enter(self, step: str) -> None:
        self._tracker.enter(step)
        if self._report is not None:
            self._tracker.note(self._summary())

    def _summary(self) -> str:
        r = self._report
        assert r is not None
        by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(f.kind for f in r.orphans).items()))
        lines = [f"{'dry run' if r.dry_run else 'delete'}; fleet {r.budget.fleet_size}"
                 + (f"; orgs {', '.join(r.org_ids)}" if r.org_ids is not None else ""),
                 f"orphans: {len(r.orphans)}" + (f" ({by_kind})" if by_kind else ""),
                 f"drift: {len(r.drift)}"]
        if not r.budget.within_caps:
            b = r.budget
            lines.append(f"{'cap exceeded, nothing deleted' if r.cap_exceeded else 'above the caps'}: "
                         f"{b.orphans} orphans; at most {b.max_deletes}, and at most "
                         f"{b.max_delete_fraction:.0%} of the fleet of {b.fleet_size}")
        if r.deleted:
            outcomes = sorted(Counter(d.outcome for d in r.deleted).items())
            lines.append("deletions: " + ", ".join(f"{outcome} {n}" for outcome, n in outcomes))
        return "\n\n".join(lines)
