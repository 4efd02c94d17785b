"""Operator routes for an org's workspaces: list them (with why any failed), inspect one, and delete
one the way its tenant would (the same deprovisioning workflow), audited as the operator."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.auth import principal
from api.errors import ApiError
from api.lookup import org_or_404
from api.state import WORKSPACES
from api.versioning import v1
from api.workspaces import WORKSPACE_ID, start_deletion, workspace_page, workspace_progress, workspace_view
from domain.status import WorkspaceStatus

routes = web.RouteTableDef()
_LISTED = ("id", "name", "runtime", "tier", "instance_id", "status", "failure_reason", "last_seen", "created_at")


async def _org_workspace(request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The org the path names and one of its workspaces (deleted ones included)."""
    org = await org_or_404(request)
    workspace_id = request.match_info["workspace_id"]
    row = await request.app[WORKSPACES].get(workspace_id, org["id"]) if WORKSPACE_ID.fullmatch(workspace_id) else None
    if row is None:
        raise ApiError(404, "WORKSPACE_NOT_FOUND", f"no such workspace in org '{org['slug']}'")
    return org, row


@routes.get("/cp/orgs/{slug}/workspaces")
async def operator_list_workspaces(request: web.Request) -> web.Response:
    """The org's workspaces that are not deleted, oldest first: ``?name=``, ``?limit=``, ``?cursor=``."""
    org = await org_or_404(request)
    rows, next_cursor = await workspace_page(request, org)
    return web.json_response(
        {
            "org": org["slug"],
            "workspaces": [{k: workspace_view(r)[k] for k in _LISTED} for r in rows],
            "next_cursor": next_cursor,
        }
    )


@routes.get("/cp/orgs/{slug}/workspaces/{workspace_id}")
async def operator_get_workspace(request: web.Request) -> web.Response:
    _, row = await _org_workspace(request)
    return web.json_response(workspace_view(row, await workspace_progress(request, row)))


@routes.delete("/cp/orgs/{slug}/workspaces/{workspace_id}")
async def operator_delete_workspace(request: web.Request) -> web.Response:
    org, row = await _org_workspace(request)
    if row["status"] == WorkspaceStatus.deleted:
        raise ApiError(409, "WORKSPACE_DELETED", f"workspace {row['id']} is already deleted")
    location = v1(f"/cp/orgs/{org['slug']}/workspaces/{row['id']}")
    return await start_deletion(request, org, row, location, actor=principal(request))
