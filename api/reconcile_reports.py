"""Operator routes for reconciliation: the reports of its runs (what it found, what it deleted and
whether the deletion caps held it back), and a run now, started by the reconcile schedule itself
so that it applies the same caps and never overlaps a run under way."""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web
from temporalio.service import RPCError, RPCStatusCode

from api.auth import require_operator
from api.errors import ApiError
from api.orphan_deletions import deletion_view
from api.paging import page_of, page_query
from api.state import AUDIT, RECONCILE, TEMPORAL
from api.versioning import v1
from domain.operations import RECONCILE_SCHEDULE_ID

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")
REPORT_ID = re.compile(r"[0-9]{1,18}")


def _iso(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "started_at": row["started_at"].isoformat(), "finished_at": row["finished_at"].isoformat()}


@routes.get("/cp/reconcile/reports")
async def list_reports(request: web.Request) -> web.Response:
    """Reports newest first, with the number of orphans, drifts and deletions of each:
    ``?limit=``, ``?cursor=``."""
    await require_operator(request)
    page = page_query(request, REPORT_ID)
    rows, next_cursor = page_of(
        await request.app[RECONCILE].summaries(before=int(page.after) if page.after else None, limit=page.limit + 1),
        page,
        lambda row: str(row["id"]),
    )
    return web.json_response({"reports": [_iso(r) for r in rows], "next_cursor": next_cursor})


@routes.get("/cp/reconcile/reports/{report_id}")
async def get_report(request: web.Request) -> web.Response:
    """One report in full: every finding (each orphan names its cloud id), every deletion of its
    run, and the deletions operators asked for by name from it."""
    await require_operator(request)
    raw = request.match_info["report_id"]
    repo = request.app[RECONCILE]
    row = await repo.report(int(raw)) if REPORT_ID.fullmatch(raw) else None
    if row is None:
        raise ApiError(404, "REPORT_NOT_FOUND", f"no reconcile report {raw!r}")
    named = [deletion_view(d) for d in await repo.orphan_deletions_of(row["id"])]
    return web.json_response({**_iso(row), "named_deletions": named})


@routes.post("/cp/reconcile/runs")
async def run_now(request: web.Request) -> web.Response:
    """Trigger the reconcile schedule: a run with its input and caps starts now, unless one is
    still running (the schedule skips overlapping runs). Its report appears in the list."""
    actor = await require_operator(request)
    try:
        await request.app[TEMPORAL].get_schedule_handle(RECONCILE_SCHEDULE_ID).trigger()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise ApiError(
            409,
            "RECONCILE_NOT_SCHEDULED",
            f"the schedule {RECONCILE_SCHEDULE_ID!r} does not exist: start the worker (python worker.py),"
            " which creates it",
        ) from None
    await request.app[AUDIT].record(actor=actor, action="reconcile.trigger", outcome="accepted")
    log.info("reconcile run requested", actor=actor)
    return web.json_response(
        {"schedule_id": RECONCILE_SCHEDULE_ID, "triggered_by": actor},
        status=202,
        headers={"Location": v1("/cp/reconcile/reports"), "Retry-After": "10"},
    )
