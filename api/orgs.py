"""Operator routes for orgs: create (starts the org's entity workflow, which onboards it), list,
show with live progress, and quota changes."""

from __future__ import annotations

import re
import secrets
from typing import Any

import structlog
from aiohttp import web

from api.auth import principal, require_operator
from api.commands import send_command, start_entity
from api.errors import ApiError, read_json
from api.lookup import SLUG, org_or_404, org_progress, slug_param
from api.network_check import require_valid_network
from api.paging import name_filter, page_of, page_query
from api.schemas import OrgCreateRequest, OrgQuotaUpdate
from api.state import ORGS, SETTINGS, TEMPORAL, WORKSPACES
from api.versioning import v1
from domain.operations import Progress, org_workflow_id
from domain.org_entity import QuotaCommand
from domain.status import OrgStatus
from domain.validate_org_network import OrgNetwork
from workflows.org import OrgWorkflow

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")
_SLUG_PREFIX = re.compile(r"[a-z0-9-]{1,40}")


def org_view(row: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """The tutorial's response shape, plus what an operator polling it needs. ``failure_reason``
    describes the operation in progress: while a step of it waits for an operator, that step's
    failure (the org's record learns of it only when the operation ends)."""
    parked = progress is not None and progress.waiting_for_operator
    return {
        "id": row["id"],
        "name": row["name"],
        "slug": row["slug"],
        "plan": row["plan"],
        "status": row["status"],
        "operation": row.get("operation"),
        "vpc_id": row["vpc_id"],
        "subnet_ids": row["subnet_ids"],
        "neon_project_id": row["neon_project_id"],
        "neon_branch_id": row["neon_branch_id"],
        "security_group_id": row["security_group_id"],
        "failure_reason": progress.failure_reason if progress and parked else row["failure_reason"],
        "abandoned": row.get("abandoned"),
        "status_reason": row.get("status_reason"),
        "cost_warning": row.get("cost_warning"),
        "workflow_id": row["workflow_id"],
        "max_workspaces": row["max_workspaces"],
        "max_tier": row["max_tier"],
        "billing_plan": row["billing_plan"],
        "progress": progress.model_dump() if progress else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


@routes.post("/cp/orgs")
async def create_org(request: web.Request) -> web.Response:
    actor = await require_operator(request)
    dry_run = request.query.get("dry_run", "false").lower()
    if dry_run not in ("true", "false"):
        raise ApiError(400, "VALIDATION_FAILED", "dry_run must be true or false")
    req = OrgCreateRequest.model_validate(await read_json(request))
    settings = request.app[SETTINGS]
    repo = request.app[ORGS]
    existing = await repo.get_by_slug(req.slug)
    network = OrgNetwork(vpc_id=req.vpc_id, subnet_ids=req.subnet_ids)
    if dry_run == "true":
        # Validates (the network too) and echoes; nothing is written and no org workflow starts.
        await require_valid_network(request, req.slug, network)
        return web.json_response(
            {
                "dry_run": True,
                "valid": True,
                "slug_available": existing is None,
                "org": {**req.model_dump(), "status": "would be provisioning", "neon_mode": settings.neon_mode},
            }
        )
    if existing is None:
        # Only a new slug: a repeated POST answers with the org it created (or 409) as before.
        await require_valid_network(request, req.slug, network)
    row, created = await repo.create_or_get(
        org_id=f"org_{secrets.token_hex(6)}",
        **req.model_dump(),
        request_hash=req.request_hash(),
        neon_mode=settings.neon_mode,
        actor=actor,
    )
    if not created and row["request_hash"] != req.request_hash():
        raise ApiError(
            409,
            "ORG_EXISTS",
            f"org '{req.slug}' already exists with a different request (status {row['status']}); choose another slug",
        )
    if row["status"] == OrgStatus.provisioning:
        # Created now, or a repeated POST: the org's entity starts once and onboards it; a repeat
        # attaches (or, after a crash between the insert and the start, adopts the org).
        await start_entity(request.app[TEMPORAL], row, settings.task_queue, new=created)
    log.info(
        "org onboarding requested",
        org_slug=req.slug,
        org_id=row["id"],
        created=created,
        workflow_id=org_workflow_id(row["id"]),
    )
    body = {
        k: org_view(row)[k] for k in ("id", "name", "slug", "plan", "neon_branch_id", "security_group_id", "status")
    }
    return web.json_response(body, status=202, headers={"Location": v1(f"/cp/orgs/{req.slug}"), "Retry-After": "2"})


@routes.get("/cp/orgs")
async def list_orgs(request: web.Request) -> web.Response:
    """Every org, by slug: ``?status=a,b`` filters, ``?prefix=`` searches slugs, ``?name=`` names,
    ``?limit=`` and ``?cursor=`` page (the answer's ``next_cursor``)."""
    await require_operator(request)
    q = request.query
    statuses = [s for s in q.get("status", "").split(",") if s]
    unknown = sorted(set(statuses) - {s.value for s in OrgStatus} - {"deleted"})
    if unknown or "deleted" in statuses:
        raise ApiError(
            400,
            "VALIDATION_FAILED",
            f"status must be among {', '.join(s.value for s in OrgStatus if s != OrgStatus.deleted)}"
            " (deleted orgs answer GET /api/v1/orgs/{slug} with their receipt)",
        )
    prefix = q.get("prefix", "")
    if prefix and not _SLUG_PREFIX.fullmatch(prefix):
        raise ApiError(400, "VALIDATION_FAILED", "prefix must be 1-40 characters of a-z, 0-9 and '-'")
    page = page_query(request, SLUG)
    rows, next_cursor = page_of(
        await request.app[ORGS].page(
            statuses=statuses, prefix=prefix, name=name_filter(request), after=page.after, limit=page.limit + 1
        ),
        page,
        lambda row: str(row["slug"]),
    )
    keys = (
        "id",
        "slug",
        "name",
        "plan",
        "status",
        "operation",
        "workflow_id",
        "failure_reason",
        "abandoned",
        "status_reason",
        "created_at",
        "updated_at",
    )
    return web.json_response(
        {
            "orgs": [{k: org_view(r)[k] for k in keys} for r in rows],
            "next_cursor": next_cursor,
        }
    )


@routes.get("/cp/orgs/{slug}")
async def get_org(request: web.Request) -> web.Response:
    await require_operator(request)
    slug = slug_param(request)
    row = await request.app[ORGS].get_by_slug(slug)
    if row is None:
        # A hard-deleted org answers with its purge receipt, which outlives it.
        receipt = await request.app[ORGS].latest_receipt(slug)
        if receipt is None:
            raise ApiError(404, "ORG_NOT_FOUND", f"no org '{slug}'")
        return web.json_response(
            {
                "id": receipt["org_id"],
                "slug": slug,
                "status": OrgStatus.deleted.value,
                "deleted_at": receipt["deleted_at"],
                "receipt": receipt,
            }
        )
    return web.json_response(org_view(row, await org_progress(request, row)))


@routes.patch("/cp/orgs/{slug}")
async def update_quota(request: web.Request) -> web.Response:
    """Quota and billing controls: max_workspaces, max_tier, billing_plan (through the org's
    workflow, so they never interleave with a deletion)."""
    row = await org_or_404(request)
    update = OrgQuotaUpdate.model_validate(await read_json(request))
    fields = update.model_dump(exclude_none=True)
    if not fields:
        raise ApiError(400, "VALIDATION_FAILED", "give at least one of max_workspaces, max_tier, billing_plan")
    await send_command(request, row, OrgWorkflow.set_quota, QuotaCommand(actor=principal(request), **fields))
    updated = await request.app[ORGS].get(row["id"]) or row
    in_use = await request.app[WORKSPACES].slots_used(row["id"])
    return web.json_response({**org_view(updated), "over_quota": over_quota(in_use, updated["max_workspaces"])})


def over_quota(in_use: int, limit: int) -> dict[str, Any] | None:
    """How far a workspace limit below current use is exceeded, and what that means (None: within it)."""
    over = in_use - limit
    if over <= 0:
        return None
    until = f" until fewer than {limit} remain (delete {over + 1})" if limit else ""
    return {
        "in_use": in_use,
        "max_workspaces": limit,
        "over": over,
        "meaning": f"the org's {in_use} workspaces keep running, {over} over the new limit of {limit};"
        f" no workspace can be created{until}",
    }
