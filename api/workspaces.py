"""Workspaces: tenants create, list, inspect and delete their own; operators see an org's metrics
(and act on its workspaces in ``api.operator_workspaces``)."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiohttp import web
from temporalio.client import Client

from api.auth import requires, tenant_org
from api.errors import ApiError, read_json, temporal_unreachable
from api.lookup import org_or_404
from api.paging import name_filter, page_of, page_query
from api.schemas import WorkspaceCreateRequest
from api.state import PROGRESS, SETTINGS, TEMPORAL, WORKSPACES
from api.versioning import v1
from db.workspaces import Refusal, WorkspaceRefused
from domain.deprovision_workspace import DeprovisionWorkspaceInput
from domain.operations import (
    Progress,
    deprovision_start,
    deprovision_workflow_id,
    provision_start,
    provision_workflow_id,
    start_or_attach,
)
from domain.provision_workspace import ProvisionWorkspaceInput
from domain.resources import TIER_INSTANCE_TYPES
from domain.scopes import Scope
from domain.settings import Settings
from domain.status import WorkspaceStatus
from workflows.deprovision_workspace import DeprovisionWorkspaceWorkflow
from workflows.provision_workspace import ProvisionWorkspaceWorkflow

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")
WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{12}")
# What a refused creation answers: the status and the machine code.
REFUSALS = {
    Refusal.org_missing: (404, "ORG_NOT_FOUND"),
    Refusal.org_suspended: (409, "ORG_SUSPENDED"),
    Refusal.org_not_active: (409, "ORG_NOT_ACTIVE"),
    Refusal.tier_not_allowed: (409, "TIER_NOT_ALLOWED"),
    Refusal.quota_exceeded: (409, "QUOTA_EXCEEDED"),
    Refusal.name_taken: (409, "WORKSPACE_NAME_TAKEN"),
}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def workspace_view(row: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "role": row["role"],
        "runtime": row["runtime"],
        "tier": row["tier"],
        "model": row["model"],
        "status": row["status"],
        "instance_id": row["instance_id"],
        "instance_type": row["instance_type"],
        "agent_url": row["agent_url"],
        # What the agent's TLS certificate must hash to (registered at its first boot): not a secret.
        "agent_cert_sha256": row.get("agent_cert_sha256"),
        "last_seen": _iso(row["last_seen"]),
        "tasks_handled": row["tasks_handled"],
        "avg_response_time_ms": row["avg_response_time_ms"],
        "failure_reason": row["failure_reason"],
        "progress": progress.model_dump() if progress else None,
        "created_at": _iso(row["created_at"]),
    }


def provision_input(settings: Settings, org: dict[str, Any], ws: dict[str, Any]) -> ProvisionWorkspaceInput:
    return ProvisionWorkspaceInput(
        workspace_id=ws["id"],
        org_id=org["id"],
        org_slug=org["slug"],
        name=ws["name"],
        role=ws["role"],
        runtime=ws["runtime"],
        tier=ws["tier"],
        model=ws["model"],
        instance_type=ws["instance_type"],
        subnet_id=ws["subnet_id"],
        security_group_id=org["security_group_id"],
        ami_id=settings.agent_ami_id,
        platform_url=settings.public_url,
        registration_timeout_seconds=settings.registration_timeout_seconds,
        agent_check_timeout_seconds=settings.agent_check_timeout_seconds,
    )


async def start_provisioning(client: Client, settings: Settings, org: dict[str, Any], ws: dict[str, Any]) -> None:
    await start_or_attach(
        client,
        ProvisionWorkspaceWorkflow.run,
        provision_input(settings, org, ws),
        provision_start(org["slug"], ws["id"], ws["name"], ws["instance_type"]),
        task_queue=settings.task_queue,
    )


async def workspace_progress(request: web.Request, row: dict[str, Any]) -> Progress | None:
    if row["status"] == WorkspaceStatus.provisioning:
        return await request.app[PROGRESS].get(provision_workflow_id(row["id"]))
    if row["status"] == WorkspaceStatus.deleting:
        return await request.app[PROGRESS].get(deprovision_workflow_id(row["id"]))
    return None


async def workspace_page(request: web.Request, org: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the org's workspaces, oldest first: ``?name=``, ``?limit=``, ``?cursor=``."""
    page = page_query(request, WORKSPACE_ID)
    return page_of(
        await request.app[WORKSPACES].list(
            org["id"], name=name_filter(request), after=page.after, limit=page.limit + 1
        ),
        page,
        lambda row: str(row["id"]),
    )


async def start_deletion(
    request: web.Request, org: dict[str, Any], row: dict[str, Any], location: str, *, actor: str
) -> web.Response:
    """Start the workspace's deprovisioning (a repeated DELETE attaches to the one under way) and
    record it as ``deleting`` at once (audited as ``actor``'s request): 202."""
    await start_or_attach(
        request.app[TEMPORAL],
        DeprovisionWorkspaceWorkflow.run,
        DeprovisionWorkspaceInput(workspace_id=row["id"], org_id=org["id"], org_slug=org["slug"]),
        deprovision_start(org["slug"], row["id"], row["name"]),
        task_queue=request.app[SETTINGS].task_queue,
    )
    await request.app[WORKSPACES].mark_deleting(row["id"], actor=actor)
    log.info("workspace deletion requested", org_slug=org["slug"], workspace_id=row["id"])
    return web.json_response(
        {"id": row["id"], "status": WorkspaceStatus.deleting.value},
        status=202,
        headers={"Location": location, "Retry-After": "5"},
    )


async def tenant_workspace(request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The caller's org and one of its workspaces; another org's workspace is simply not found."""
    org = tenant_org(request)
    workspace_id = request.match_info["workspace_id"]
    row = await request.app[WORKSPACES].get(workspace_id, org["id"]) if WORKSPACE_ID.fullmatch(workspace_id) else None
    if row is None or row["status"] == WorkspaceStatus.deleted:
        raise ApiError(404, "WORKSPACE_NOT_FOUND", "no such workspace")
    return org, row


@routes.post("/workspaces")
@requires(Scope.workspaces_write)
async def create_workspace(request: web.Request) -> web.Response:
    org = tenant_org(request)
    req = WorkspaceCreateRequest.model_validate(await read_json(request))
    settings = request.app[SETTINGS]
    repo = request.app[WORKSPACES]
    workspace_id = f"ws_{secrets.token_hex(6)}"
    subnet_id = org["subnet_ids"][int(workspace_id[3:], 16) % len(org["subnet_ids"])]
    try:
        ws = await repo.reserve(
            org["id"],
            workspace_id=workspace_id,
            name=req.name,
            role=req.role,
            runtime=req.runtime,
            tier=req.tier,
            model=req.model,
            instance_type=TIER_INSTANCE_TYPES[req.tier],
            subnet_id=subnet_id,
            actor=f"org_key:{org['key_id']}",
        )
    except WorkspaceRefused as refused:
        status, code = REFUSALS[refused.reason]
        raise ApiError(status, code, str(refused)) from None
    try:
        await start_provisioning(request.app[TEMPORAL], settings, org, ws)
    except Exception as err:
        if not temporal_unreachable(err):
            raise
        # No workflow means nobody would ever free the slot: give it back before answering.
        await repo.update(
            ws["id"],
            actor="api",
            action="workspace.fail",
            outcome="failed",
            status=WorkspaceStatus.failed.value,
            holds_slot=False,
            failure_reason="could not start provisioning: Temporal unavailable",
        )
        raise
    log.info(
        "workspace requested", org_slug=org["slug"], workspace_id=ws["id"], workflow_id=provision_workflow_id(ws["id"])
    )
    return web.json_response(
        {"id": ws["id"], "status": ws["status"]},
        status=202,
        headers={"Location": v1(f"/workspaces/{ws['id']}"), "Retry-After": "5"},
    )


@routes.get("/workspaces")
@requires(Scope.read)
async def list_workspaces(request: web.Request) -> web.Response:
    org = tenant_org(request)
    rows, next_cursor = await workspace_page(request, org)
    return web.json_response({"workspaces": [workspace_view(r) for r in rows], "next_cursor": next_cursor})


@routes.get("/workspaces/{workspace_id}")
@requires(Scope.read)
async def get_workspace(request: web.Request) -> web.Response:
    _, row = await tenant_workspace(request)
    return web.json_response(workspace_view(row, await workspace_progress(request, row)))


@routes.delete("/workspaces/{workspace_id}")
@requires(Scope.workspaces_write)
async def delete_workspace(request: web.Request) -> web.Response:
    org, row = await tenant_workspace(request)
    return await start_deletion(request, org, row, v1(f"/workspaces/{row['id']}"), actor=f"org_key:{org['key_id']}")


@routes.get("/cp/orgs/{slug}/metrics")
async def operator_metrics(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    window = timedelta(seconds=request.app[SETTINGS].active_agent_window_seconds)
    m = await request.app[WORKSPACES].metrics(org["id"], active_within=window)
    return web.json_response(
        {
            "org": org["slug"],
            "total_workspaces": m["total_workspaces"],
            "active_agents": m["active_agents"],
            "avg_response_time_ms": round(float(m["avg_response_time_ms"]), 3),
            "total_tasks_dispatched": int(m["total_tasks_dispatched"]),
        }
    )
