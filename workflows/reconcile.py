"""Reconciliation: find orphaned cloud resources and ledger drift; delete orphans only on request.

ReconcileWorkflowV2 (what the schedule starts): inventory, a page of one kind at a time (each page
is compared with the records inside its activity, and only its orphans come back) -> drift, a
page of ``created`` ledger rows at a time -> compare with the caps -> delete (only with ``delete``
and within both caps: instances, then security groups, then Neon) -> store the report in parts.
Only pages, ids and counts pass through the history, never the whole fleet.

ReconcileWorkflow, the first version, listed the whole fleet in two activity results; it stays
registered for the runs started before V2 (README, "Changing a workflow").
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Sequence

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import ReconcileActivities
    from domain.reconcile import (
        DELETE_PHASES,
        INVENTORY_KINDS,
        CloudResource,
        DeleteBudget,
        Deletion,
        DriftPageRequest,
        Finding,
        InventoryPageRequest,
        ReconcileInput,
        ReconcileOutcome,
        ReconcileReport,
        RecordsRequest,
        ReportPart,
        find_drift,
        find_orphans,
    )
    from domain.resources import ResourceKind
    from workflows.common import CLEANUP_DEADLINE, ProgressTracker, Tracked, failure_reason, run_activity

STEPS = ["inventory", "read_records", "compare", "delete", "store_report"]
STEPS_V2 = ["inventory", "drift", "compare", "delete", "store_report"]
ProgressEnter = Callable[[str], None]


@workflow.defn
class ReconcileWorkflowV2(Tracked):
    def __init__(self) -> None:
        super().__init__("reconcile", STEPS_V2, "running")
        self._report: ReconcileReport | None = None

    @workflow.query
    def report(self) -> ReconcileReport | None:
        """The findings so far (None until the comparison is done)."""
        return self._report

    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileOutcome:
        info = workflow.info()
        started = workflow.now()

        self._tracker.enter("inventory")
        pages = await asyncio.gather(*(self._inventory(kind, inp) for kind in INVENTORY_KINDS))
        fleet_size = sum(listed for listed, _ in pages)
        orphans = [orphan for _, found in pages for orphan in found]

        self._tracker.enter("drift")
        drift: list[Finding] = []
        after: int | None = 0
        while after is not None:
            page = await run_activity(
                ReconcileActivities.drift_page,
                DriftPageRequest(after=after, page_size=inp.page_size, org_ids=inp.org_ids, recorded_before=started),
                f"check ledger rows after #{after}",
            )
            drift += page.drift
            after = page.next_after

        self._tracker.enter("compare")
        budget = DeleteBudget(
            orphans=len(orphans),
            fleet_size=fleet_size,
            max_deletes=inp.max_deletes,
            max_delete_fraction=inp.max_delete_fraction,
        )
        report = self._report = ReconcileReport(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=started,
            dry_run=not inp.delete,
            org_ids=inp.org_ids,
            budget=budget,
            cap_exceeded=inp.delete and not budget.within_caps,
            findings=orphans + drift,
        )
        self._tracker.note(summary_text(report))
        report.deleted = await _delete_within_caps(report, inp, orphans, self._enter)

        report.finished_at = workflow.now()
        self._enter("store_report")
        report.id = report_id = await self._store(report, inp.page_size)
        _finished(self._tracker, report)
        return ReconcileOutcome(
            report_id=report_id,
            workflow_id=report.workflow_id,
            run_id=report.run_id,
            dry_run=report.dry_run,
            cap_exceeded=report.cap_exceeded,
            budget=budget,
            orphans=len(orphans),
            drift=len(drift),
            deleted=sum(d.outcome in ("deleted", "already_gone") for d in report.deleted),
            failed=sum(d.outcome == "failed" for d in report.deleted),
        )

    async def _inventory(self, kind: ResourceKind, inp: ReconcileInput) -> tuple[int, list[Finding]]:
        """Every page of one kind: how many resources it holds, and its orphans."""
        listed, orphans = 0, []
        cursor: str | None = None
        for number in itertools.count(1):
            page = await run_activity(
                ReconcileActivities.inventory_page,
                InventoryPageRequest(kind=kind, cursor=cursor, page_size=inp.page_size, org_ids=inp.org_ids),
                f"list {kind.value}s, page {number}",
            )
            listed += page.listed
            orphans += page.orphans
            cursor = page.next_cursor
            if cursor is None:
                break
        return listed, orphans

    async def _store(self, report: ReconcileReport, part_size: int) -> int:
        """The report in parts of at most ``part_size`` findings, so no payload grows with the fleet."""
        findings = report.findings
        report_id = 0
        for offset in range(0, max(len(findings), 1), part_size):
            part = report.model_copy(
                update={
                    "findings": findings[offset : offset + part_size],
                    "deleted": report.deleted if offset == 0 else [],
                }
            )
            report_id = await run_activity(
                ReconcileActivities.save_report_part,
                ReportPart(report=part, offset=offset),
                "store the report" if offset == 0 else f"store findings from #{offset}",
            )
        return report_id

    def _enter(self, step: str) -> None:
        self._tracker.enter(step)
        if self._report is not None:
            self._tracker.note(summary_text(self._report))


@workflow.defn
class ReconcileWorkflow(Tracked):
    def __init__(self) -> None:
        super().__init__("reconcile", STEPS, "running")
        self._report: ReconcileReport | None = None

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
        records = await run_activity(
            ReconcileActivities.read_records,
            RecordsRequest.about(candidates, created_in_orgs=inp.org_ids),
            "read the ledger, orgs and workspaces",
        )

        self._enter("compare")
        orphans = find_orphans(candidates, records)
        budget = DeleteBudget(
            orphans=len(orphans),
            fleet_size=len(existing),
            max_deletes=inp.max_deletes,
            max_delete_fraction=inp.max_delete_fraction,
        )
        report = self._report = ReconcileReport(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=started,
            dry_run=not inp.delete,
            org_ids=inp.org_ids,
            budget=budget,
            cap_exceeded=inp.delete and not budget.within_caps,
            findings=orphans + find_drift(records, existing, scope, recorded_before=started),
        )
        self._tracker.note(summary_text(report))
        report.deleted = await _delete_within_caps(report, inp, orphans, self._enter)

        report.finished_at = workflow.now()
        self._enter("store_report")
        report = self._report = await run_activity(ReconcileActivities.save_report, report, "store the report")
        _finished(self._tracker, report)
        return report

    def _enter(self, step: str) -> None:
        self._tracker.enter(step)
        if self._report is not None:
            self._tracker.note(summary_text(self._report))


async def _delete_within_caps(
    report: ReconcileReport, inp: ReconcileInput, orphans: Sequence[Finding], enter: ProgressEnter
) -> list[Deletion]:
    """Delete the orphans, phase by phase, when asked to and within both caps."""
    if report.cap_exceeded:
        # A reconciler that deletes half the fleet because a table was emptied is worse than a leak.
        workflow.logger.warning("reconcile deletion refused: caps exceeded", extra=report.budget.model_dump())
        return []
    deleted: list[Deletion] = []
    if not (inp.delete and orphans):
        return deleted
    enter("delete")
    for kinds in DELETE_PHASES:
        batch = [o for o in orphans if o.kind in kinds]
        if kinds[0] in (ResourceKind.neon_branch, ResourceKind.neon_project):
            # Neon locks a project while an operation runs: one deletion at a time.
            deleted += [await delete_orphan(o) for o in batch]
        else:
            deleted += await asyncio.gather(*(delete_orphan(o) for o in batch))
        # The report shows each phase's deletions as they finish.
        report.deleted = deleted
        enter("delete")
    return deleted


async def delete_orphan(orphan: Finding) -> Deletion:
    """Delete one orphan (re-checked first by the activity); a failure is a ``failed`` deletion."""
    try:
        return await run_activity(
            ReconcileActivities.delete_orphan,
            orphan,
            summary=f"delete orphan {orphan.kind} {orphan.cloud_id} ({orphan.reason})",
            deadline=CLEANUP_DEADLINE,
            waits=True,
        )
    except ActivityError as err:
        reason = failure_reason(f"delete {orphan.kind}", err)
        workflow.logger.warning("orphan deletion failed", extra={"cloud_id": orphan.cloud_id, "reason": reason})
        return Deletion(
            kind=orphan.kind, cloud_id=orphan.cloud_id or "", org_id=orphan.org_id, outcome="failed", error=reason
        )


def _finished(tracker: ProgressTracker, report: ReconcileReport) -> None:
    tracker.finish("cap_exceeded" if report.cap_exceeded else "done")
    tracker.note(summary_text(report))
    workflow.logger.info(
        "reconcile finished",
        extra={
            "report_id": report.id,
            "dry_run": report.dry_run,
            "orphans": len(report.orphans),
            "drift": len(report.drift),
            "deleted": sum(d.outcome in ("deleted", "already_gone") for d in report.deleted),
            "failed": sum(d.outcome == "failed" for d in report.deleted),
            "cap_exceeded": report.cap_exceeded,
            "fleet_size": report.budget.fleet_size,
        },
    )


def summary_text(r: ReconcileReport) -> str:
    """The run's findings, caps and deletions as the Temporal UI shows them."""
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(f.kind.value for f in r.orphans).items()))
    lines = [
        f"{'dry run' if r.dry_run else 'delete'}; fleet {r.budget.fleet_size}"
        + (f"; orgs {', '.join(r.org_ids)}" if r.org_ids is not None else ""),
        f"orphans: {len(r.orphans)}" + (f" ({by_kind})" if by_kind else ""),
        f"drift: {len(r.drift)}",
    ]
    if not r.budget.within_caps:
        lines.append(f"{'cap exceeded, nothing deleted' if r.cap_exceeded else 'above the caps'}: {r.budget.caps_text}")
    if r.deleted:
        outcomes = sorted(Counter(d.outcome for d in r.deleted).items())
        lines.append("deletions: " + ", ".join(f"{outcome} {n}" for outcome, n in outcomes))
    return "\n\n".join(lines)
