"""Operator routes for orgs: ``POST /cp/orgs`` starts onboarding, ``GET /cp/orgs/{slug}`` reports it."""

from __future__ import annotations

import re
import secrets

import structlog
from aiohttp import web
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.auth import require_operator
from api.errors import ApiError, read_json
from api.versioning import v1
from api.state import ORGS, POOL, PROGRESS, SETTINGS, TEMPORAL
from db.purge import latest_receipt
from domain.models import OnboardOrgInput, OrgCreateRequest, OrgQuotaUpdate, OrgStatus, Progress
from domain.temporal import OPERATION, ORG_SLUG
from workflows.hard_delete_org import HardDeleteOrgWorkflow, delete_workflow_id
from workflows.onboard_org import OnboardOrgWorkflow

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")
_SLUG = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")


def onboard_workflow_id(org_id: str) -> str:
    return f"org-onboard:{org_id}"


def org_view(row: dict, progress: Progress | None = None) -> dict:
    """The tutorial's response shape, plus what an operator polling it needs."""
    return {
        "id": row["id"],
        "name": row["name"],
        "slug": row["slug"],
        "plan": row["plan"],
        "status": row["status"],
        "vpc_id": row["vpc_id"],
        "subnet_ids": row["subnet_ids"],
        "neon_project_id": row["neon_project_id"],
        "neon_branch_id": row["neon_branch_id"],
        "security_group_id": row["security_group_id"],
        "failure_reason": row["failure_reason"],
        "status_reason": row.get("status_reason"),
        "workflow_id": row["workflow_id"],
        "max_workspaces": row["max_workspaces"],
        "max_tier": row["max_tier"],
        "billing_plan": row["billing_plan"],
        "progress": progress.model_dump() if progress else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def slug_param(request: web.Request) -> str:
    slug = request.match_info["slug"]
    if not _SLUG.match(slug):
        raise ApiError(400, "INVALID_SLUG", "slug must be 3-40 characters of a-z, 0-9 and '-', starting with a letter")
    return slug


async def start_onboarding(client: Client, row: dict, task_queue: str) -> None:
    """Start the org's onboarding workflow, or attach to the one already started for it."""
    inp = OnboardOrgInput(org_id=row["id"], slug=row["slug"], name=row["name"], plan=row["plan"],
                          vpc_id=row["vpc_id"], subnet_ids=row["subnet_ids"], neon_mode=row["neon_mode"])
    try:
        await client.start_workflow(
            OnboardOrgWorkflow.run, inp,
            id=onboard_workflow_id(row["id"]),
            task_queue=task_queue,
            # A repeated POST attaches to the running workflow and never starts a second one.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"Onboard org {row['slug']} ({row['plan']})",
            search_attributes=TypedSearchAttributes([SearchAttributePair(ORG_SLUG, row["slug"]),
                                                     SearchAttributePair(OPERATION, "onboard")]),
        )
    except WorkflowAlreadyStartedError:
        pass  # It already ran to completion: the org row tells its outcome.


async def live_progress(request: web.Request, row: dict) -> Progress | None:
    """The running workflow's progress query (onboarding, or the hard delete); None when none
    runs or it cannot answer quickly."""
    if row["status"] == OrgStatus.provisioning and row["workflow_id"]:
        workflow_id, query = row["workflow_id"], OnboardOrgWorkflow.progress
    elif row["status"] == OrgStatus.deleting:
        workflow_id, query = delete_workflow_id(row["id"]), HardDeleteOrgWorkflow.progress
    else:
        return None
    return await request.app[PROGRESS].get(workflow_id, query)


@routes.post("/cp/orgs")
async def create_org(request: web.Request) -> web.Response:
    require_operator(request)
    dry_run = request.query.get("dry_run", "false").lower()
    if dry_run not in ("true", "false"):
        raise ApiError(400, "VALIDATION_FAILED", "dry_run must be true or false")
    req = OrgCreateRequest.model_validate(await read_json(request))
    settings = request.app[SETTINGS]
    repo = request.app[ORGS]
    if dry_run == "true":
        # Validates and echoes; nothing is written and no workflow starts.
        existing = await repo.get_by_slug(req.slug)
        return web.json_response({"dry_run": True, "valid": True, "slug_available": existing is None,
                                  "org": {**req.model_dump(), "status": "would be provisioning",
                                          "neon_mode": settings.neon_mode}})
    row, created = await repo.create_or_get(req, org_id=f"org_{secrets.token_hex(6)}",
                                            neon_mode=settings.neon_mode, actor="operator")
    if not created and row["request_hash"] != req.request_hash():
        raise ApiError(409, "ORG_EXISTS", f"org '{req.slug}' already exists with a different request "
                                          f"(status {row['status']}); choose another slug")
    if row["status"] == OrgStatus.provisioning:
        await start_onboarding(request.app[TEMPORAL], row, settings.task_queue)
        if row["workflow_id"] is None:
            await repo.set_workflow(row["id"], onboard_workflow_id(row["id"]), None)
    log.info("org onboarding requested", org_slug=req.slug, org_id=row["id"], created=created,
             workflow_id=onboard_workflow_id(row["id"]))
    body = {k: org_view(row)[k] for k in ("id", "name", "slug", "plan", "neon_branch_id", "security_group_id", "status")}
    return web.json_response(body, status=202,
                             headers={"Location": v1(f"/cp/orgs/{req.slug}"), "Retry-After": "2"})


async def org_or_404(request: web.Request) -> dict:
    """For operator routes under /cp/orgs/{slug}: authenticated, validated, existing."""
    require_operator(request)
    slug = slug_param(request)
    row = await request.app[ORGS].get_by_slug(slug)
    if row is None:
        raise ApiError(404, "ORG_NOT_FOUND", f"no org '{slug}'")
    return row


@routes.get("/cp/orgs/{slug}")
async def get_org(request: web.Request) -> web.Response:
    require_operator(request)
    slug = slug_param(request)
    row = await request.app[ORGS].get_by_slug(slug)
    if row is None:
        # A hard-deleted org answers with its purge receipt, which outlives it.
        receipt = await latest_receipt(request.app[POOL], slug)
        if receipt is None:
            raise ApiError(404, "ORG_NOT_FOUND", f"no org '{slug}'")
        return web.json_response({"id": receipt["org_id"], "slug": slug, "status": OrgStatus.deleted.value,
                                  "deleted_at": receipt["deleted_at"], "receipt": receipt})
    return web.json_response(org_view(row, await live_progress(request, row)))


@routes.patch("/cp/orgs/{slug}")
async def update_quota(request: web.Request) -> web.Response:
    """Quota and billing controls: max_workspaces, max_tier, billing_plan."""
    row = await org_or_404(request)
    update = OrgQuotaUpdate.model_validate(await read_json(request))
    fields = update.model_dump(exclude_none=True)
    if not fields:
        raise ApiError(400, "VALIDATION_FAILED", "give at least one of max_workspaces, max_tier, billing_plan")
    row = await request.app[ORGS].update(row["id"], actor="operator", action="org.quota", detail=fields, **fields)
    return web.json_response(org_view(row))
