"""Operator routes for an org's lifecycle: suspend, resume, hard delete (with retry and abandon
of a parked teardown), the audit trail and its verification."""

from __future__ import annotations

import structlog
from aiohttp import web
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.auth import require_operator
from api.errors import ApiError, read_json
from api.orgs import live_progress, org_or_404, slug_param
from api.versioning import v1
from api.state import POOL, SETTINGS, TEMPORAL, WORKSPACES
from db import audit
from domain.models import (
    DeleteOrgRequest,
    HardDeleteOrgInput,
    OrgStatus,
    ResumeOrgInput,
    SuspendOrgInput,
    SuspendRequest,
    WorkspaceStatus,
)
from domain.temporal import OPERATION, ORG_SLUG
from workflows.hard_delete_org import HardDeleteOrgWorkflow, delete_workflow_id
from workflows.suspend_org import ResumeOrgWorkflow, SuspendOrgWorkflow

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")
_LIVE_WORKSPACES = {WorkspaceStatus.provisioning, WorkspaceStatus.running, WorkspaceStatus.stopped,
                    WorkspaceStatus.deleting}


def _attributes(slug: str, operation: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([SearchAttributePair(ORG_SLUG, slug), SearchAttributePair(OPERATION, operation)])


async def _optional_json(request: web.Request) -> dict:
    """The tutorial's suspend call sends no body: an empty body means defaults."""
    if not request.can_read_body:
        return {}
    return await read_json(request)


def _accepted(slug: str, status: str, workflow_id: str) -> web.Response:
    return web.json_response({"slug": slug, "status": status, "workflow_id": workflow_id}, status=202,
                             headers={"Location": v1(f"/cp/orgs/{slug}"), "Retry-After": "2"})


@routes.post("/cp/orgs/{slug}/suspend")
async def suspend(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    req = SuspendRequest.model_validate(await _optional_json(request))
    if org["status"] not in (OrgStatus.active, OrgStatus.suspended):
        raise ApiError(409, "ORG_NOT_ACTIVE", f"org is {org['status']}: only an active org can be suspended")
    workflow_id = f"org-suspend:{org['id']}"
    await request.app[TEMPORAL].start_workflow(
        SuspendOrgWorkflow.run, SuspendOrgInput(org_id=org["id"], slug=org["slug"], reason=req.reason,
                                                stop_instances=req.stop_instances),
        id=workflow_id, task_queue=request.app[SETTINGS].task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"Suspend org {org['slug']}", search_attributes=_attributes(org["slug"], "suspend"))
    log.info("org suspension requested", org_slug=org["slug"], workflow_id=workflow_id)
    return _accepted(org["slug"], OrgStatus.suspended.value, workflow_id)


@routes.post("/cp/orgs/{slug}/resume")
async def resume(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    if org["status"] != OrgStatus.suspended:
        raise ApiError(409, "ORG_NOT_SUSPENDED", f"org is {org['status']}, not suspended")
    workflow_id = f"org-resume:{org['id']}"
    await request.app[TEMPORAL].start_workflow(
        ResumeOrgWorkflow.run, ResumeOrgInput(org_id=org["id"], slug=org["slug"]),
        id=workflow_id, task_queue=request.app[SETTINGS].task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"Resume org {org['slug']}", search_attributes=_attributes(org["slug"], "resume"))
    log.info("org resume requested", org_slug=org["slug"], workflow_id=workflow_id)
    return _accepted(org["slug"], OrgStatus.active.value, workflow_id)


@routes.delete("/cp/orgs/{slug}")
async def hard_delete(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    req = DeleteOrgRequest.model_validate(await _optional_json(request) or {"confirm": ""})
    if req.confirm != org["slug"]:
        raise ApiError(400, "CONFIRMATION_REQUIRED", f'"confirm" must equal the slug "{org["slug"]}" to delete it')
    live = [w for w in await request.app[WORKSPACES].list(org["id"]) if w["status"] in _LIVE_WORKSPACES]
    if live and not req.delete_workspaces:
        raise ApiError(409, "ORG_HAS_WORKSPACES", f"org has {len(live)} workspace(s): send "
                                                 '"delete_workspaces": true to terminate them with the org')
    workflow_id = delete_workflow_id(org["id"])
    try:
        await request.app[TEMPORAL].start_workflow(
            HardDeleteOrgWorkflow.run,
            HardDeleteOrgInput(org_id=org["id"], slug=org["slug"], vpc_id=org["vpc_id"], neon_mode=org["neon_mode"]),
            id=workflow_id, task_queue=request.app[SETTINGS].task_queue,
            # Two concurrent deletes of one org: the second is refused. A failed or abandoned one
            # may be run again.
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"Hard-delete org {org['slug']} and everything it owns",
            search_attributes=_attributes(org["slug"], "hard-delete"))
    except WorkflowAlreadyStartedError:
        raise ApiError(409, "DELETE_IN_PROGRESS", f"a deletion of '{org['slug']}' is already running: "
                                                  f"see GET /cp/orgs/{org['slug']}") from None
    log.info("org deletion requested", org_slug=org["slug"], workflow_id=workflow_id)
    return _accepted(org["slug"], OrgStatus.deleting.value, workflow_id)


async def _decide(request: web.Request, decision: str) -> web.Response:
    org = await org_or_404(request)
    progress = await live_progress(request, org)
    if progress is None or not progress.waiting_for_operator:
        raise ApiError(409, "NOTHING_PARKED", f"no teardown of '{org['slug']}' is waiting for an operator")
    handle = request.app[TEMPORAL].get_workflow_handle(delete_workflow_id(org["id"]))
    await handle.signal(decision)
    log.info("teardown decision", org_slug=org["slug"], decision=decision, step=progress.step)
    return web.json_response({"slug": org["slug"], "decision": decision, "step": progress.step}, status=202,
                             headers={"Location": v1(f"/cp/orgs/{org['slug']}"), "Retry-After": "2"})


@routes.post("/cp/orgs/{slug}/teardown/retry")
async def retry_teardown(request: web.Request) -> web.Response:
    return await _decide(request, "retry")


@routes.post("/cp/orgs/{slug}/teardown/abandon")
async def abandon_teardown(request: web.Request) -> web.Response:
    return await _decide(request, "abandon")


@routes.get("/cp/teardowns")
async def list_teardowns(request: web.Request) -> web.Response:
    """Orgs being deleted, with the step each is on and whether it waits for an operator."""
    require_operator(request)
    async with request.app[POOL].connection() as conn:
        rows = await (await conn.execute(
            "SELECT * FROM orgs WHERE status = 'deleting' ORDER BY updated_at")).fetchall()
    result = []
    for org in rows:
        progress = await live_progress(request, org)
        result.append({"slug": org["slug"], "id": org["id"], "workflow_id": delete_workflow_id(org["id"]),
                       "progress": progress.model_dump() if progress else None,
                       "parked": bool(progress and progress.waiting_for_operator)})
    return web.json_response({"teardowns": result})


@routes.get("/cp/orgs/{slug}/audit")
async def org_audit(request: web.Request) -> web.Response:
    """The org's audit records (they outlive it) and a verification of the whole chain."""
    require_operator(request)
    slug = slug_param(request)
    async with request.app[POOL].connection() as conn:
        records = await audit.records_for(conn, slug)
        chain = await audit.verify_chain(conn)
    if not records:
        raise ApiError(404, "ORG_NOT_FOUND", f"no audit records for '{slug}'")
    for r in records:
        r["at"] = r["at"].isoformat()
    return web.json_response({"org": slug, "records": records, "chain": chain})
