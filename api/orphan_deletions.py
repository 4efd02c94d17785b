"""An operator deletes one orphan a reconcile report names: admitted here under the reconcile cap,
then re-checked and deleted by DeleteOrphanWorkflow, whose outcome the request's record shows.

A report whose orphans exceeded the caps is refused: that many orphans at once usually means lost
records (an emptied table), and deleting its orphans one by one would be the mass deletion the caps
exist to stop. Every named deletion counts towards TENANTFLOW_RECONCILE_MAX_DELETES per reconcile
interval, with what the reconcile runs deleted in it (``ReconcileRepo.request_orphan_deletion``)."""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web

from api.auth import require_operator
from api.errors import ApiError, read_json
from api.schemas import OrphanDeletionRequest
from api.state import RECONCILE, SETTINGS, TEMPORAL
from api.versioning import API_V1
from db.reconcile import DeletionCapReached
from domain.operations import orphan_deletion_start, start_or_attach
from domain.reconcile import DeleteBudget, DeleteOrphanInput, Finding
from workflows.delete_orphan import DeleteOrphanWorkflow

# New routes: canonical paths only, no deprecated mirror.
routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")
DELETIONS = f"{API_V1}/reconcile/orphan-deletions"
DELETION_ID = re.compile(r"[0-9]{1,18}")
CAP_EXCEEDED = "RECONCILE_CAP_EXCEEDED"


def deletion_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "report_id": row["report_id"],
        "kind": row["kind"],
        "cloud_id": row["cloud_id"],
        "org_id": row["org_id"],
        "org_slug": row["org_slug"],
        "status": row["status"],
        "code": row["code"],
        "reason": row["reason"],
        "requested_by": row["requested_by"],
        "requested_at": row["requested_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "workflow_id": row["workflow_id"],
    }


def _refuse_over_the_caps(report: dict[str, Any]) -> None:
    stored = report["detail"].get("budget")
    budget = DeleteBudget.model_validate(stored) if stored else None
    if report["cap_exceeded"] or (budget is not None and not budget.within_caps):
        shown = f" ({budget.caps_text})" if budget else ""
        raise ApiError(
            409,
            CAP_EXCEEDED,
            f"report {report['id']} found more orphans than the reconcile caps allow{shown}: so many at once"
            " usually means lost records (an emptied table, a restore); find out why before deleting any,"
            " and name the orphan from a later report within the caps",
        )


@routes.post(DELETIONS)
async def request_orphan_deletion(request: web.Request) -> web.Response:
    """Delete one orphan that a report names: 202 and the deletion to follow (a repeat while it
    runs attaches to it), or 200 with the deletion that already removed it."""
    actor = await require_operator(request)
    req = OrphanDeletionRequest.model_validate(await read_json(request))
    repo, settings = request.app[RECONCILE], request.app[SETTINGS]
    report = await repo.report(req.report_id)
    if report is None:
        raise ApiError(404, "REPORT_NOT_FOUND", f"no reconcile report {req.report_id}")
    finding = next(
        (f for f in report["findings"] if f.get("problem") == "orphan" and f.get("cloud_id") == req.cloud_id), None
    )
    if finding is None:
        raise ApiError(
            404, "ORPHAN_NOT_IN_REPORT", f"report {req.report_id} names no orphan {req.cloud_id!r} among its findings"
        )
    _refuse_over_the_caps(report)
    orphan = Finding.model_validate(finding)
    start = orphan_deletion_start(orphan.kind.value, req.cloud_id)
    try:
        row, new = await repo.request_orphan_deletion(
            report_id=req.report_id,
            finding=orphan.model_dump(mode="json"),
            workflow_id=start.id,
            actor=actor,
            max_deletes=settings.reconcile_max_deletes,
            window_seconds=settings.reconcile_interval_seconds,
        )
    except DeletionCapReached as full:
        raise ApiError(409, CAP_EXCEEDED, str(full), deleted=full.deleted, max_deletes=full.max_deletes) from None
    if row["status"] != "deleting":
        return web.json_response(deletion_view(row))
    # Also for a repeat: starts the workflow again if the first request never got to.
    await start_or_attach(
        request.app[TEMPORAL],
        DeleteOrphanWorkflow.run,
        DeleteOrphanInput(
            deletion_id=row["id"], report_id=row["report_id"], orphan=orphan, requested_by=row["requested_by"]
        ),
        start,
        task_queue=settings.task_queue,
    )
    log.info("orphan deletion requested", actor=actor, cloud_id=req.cloud_id, deletion_id=row["id"], new=new)
    return web.json_response(
        deletion_view(row),
        status=202,
        headers={"Location": f"{DELETIONS}/{row['id']}", "Retry-After": "2"},
    )


@routes.get(DELETIONS + "/{deletion_id}")
async def get_orphan_deletion(request: web.Request) -> web.Response:
    """A named deletion: under way (``deleting``), or its outcome and why."""
    await require_operator(request)
    raw = request.match_info["deletion_id"]
    row = await request.app[RECONCILE].orphan_deletion(int(raw)) if DELETION_ID.fullmatch(raw) else None
    if row is None:
        raise ApiError(404, "ORPHAN_DELETION_NOT_FOUND", f"no orphan deletion {raw!r}")
    return web.json_response(deletion_view(row))
