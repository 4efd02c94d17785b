"""DeleteOrphanWorkflow: an operator deletes one orphan a reconcile report names.

The report is not trusted: re-check (the resource, read again, by the reconciler's rules) ->
delete (the reconciler's own ``delete_orphan``, which re-checks the records once more right before
it deletes) -> record the outcome on the request's row. The API admitted the request under the
reconcile cap before starting it; the id ``reconcile-delete-orphan:<cloud id>`` makes a repeat
attach to the deletion under way.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import ReconcileActivities
    from domain.reconcile import NOT_AN_ORPHAN, DeleteOrphanInput, OrphanDeletionResult
    from domain.status import OrphanDeletionStatus
    from workflows.common import Tracked, run_activity
    from workflows.reconcile import delete_orphan

STEPS = ["recheck", "delete", "record"]


@workflow.defn
class DeleteOrphanWorkflow(Tracked):
    def __init__(self) -> None:
        super().__init__("reconcile-delete-orphan", STEPS, "running")

    @workflow.run
    async def run(self, inp: DeleteOrphanInput) -> OrphanDeletionResult:
        named = inp.orphan
        cloud_id = named.cloud_id or ""
        self._tracker.note(f"{named.kind.value} {cloud_id} from report {inp.report_id}, asked by {inp.requested_by}")

        self._tracker.enter("recheck")
        check = await run_activity(
            ReconcileActivities.recheck_orphan, named, f"re-check {named.kind.value} {cloud_id} is still an orphan"
        )
        result = OrphanDeletionResult(
            deletion_id=inp.deletion_id, kind=named.kind, cloud_id=cloud_id, status=OrphanDeletionStatus.already_gone
        )
        if check.exists and check.orphan is None:
            result.status, result.code, result.reason = OrphanDeletionStatus.refused, NOT_AN_ORPHAN, check.accounted_for
        elif check.orphan is not None:
            self._tracker.enter("delete")
            deletion = await delete_orphan(check.orphan)
            if deletion.outcome == "no_longer_orphaned":
                # The records changed between the re-check and the deletion's own re-check.
                result.status, result.code = OrphanDeletionStatus.refused, NOT_AN_ORPHAN
                result.reason = "no longer an orphan: the records account for it now"
            else:
                result.status, result.reason = OrphanDeletionStatus(deletion.outcome), deletion.error

        self._tracker.enter("record")
        await run_activity(ReconcileActivities.finish_orphan_deletion, result, f"record: {result.status.value}")
        self._tracker.finish(result.status.value, result.reason)
        workflow.logger.info(
            "named orphan deletion finished",
            extra={"cloud_id": cloud_id, "status": result.status.value, "requested_by": inp.requested_by},
        )
        return result
