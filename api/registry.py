"""Where agents report in: registration with the one-time token, then heartbeats."""

from __future__ import annotations

import structlog
from aiohttp import web

from api.auth import bearer_token
from api.errors import ApiError, read_json
from api.ratelimit import limit_principal
from api.schemas import AgentHeartbeatRequest, AgentRegisterRequest
from api.state import SETTINGS, TEMPORAL, WORKSPACES
from db.workspaces import TokenRefused
from domain.operations import provision_workflow_id
from domain.provision_workspace import AgentRegistration
from workflows.provision_workspace import ProvisionWorkspaceWorkflow

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")


@routes.post("/registry/register")
async def register(request: web.Request) -> web.Response:
    """Spend the one-time token for a workspace token, recording the fingerprint of the agent's TLS
    certificate (the worker pins it). The agent's address is never taken from here: the platform
    dials the instance's private IP on the agent port."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "UNAUTHORIZED", "registration needs Authorization: Bearer <registration token>")
    req = AgentRegisterRequest.model_validate(await read_json(request))
    workspaces = request.app[WORKSPACES]
    try:
        # Checked, then the workflow woken, then spent: no database lock is held across the
        # Temporal call, and a failed signal leaves the token unspent for the agent's retry.
        ws = await workspaces.check_registration_token(token, req.workspace_id)
        await limit_principal(request, f"workspace:{ws['id']}")
        await (
            request.app[TEMPORAL]
            .get_workflow_handle(provision_workflow_id(ws["id"]))
            .signal(
                ProvisionWorkspaceWorkflow.agent_registered,
                AgentRegistration(agent_cert_sha256=req.agent_cert_sha256),
            )
        )
        ws, workspace_token = await workspaces.redeem_registration_token(token, req.workspace_id, req.agent_cert_sha256)
    except TokenRefused as refused:
        log.warning("registration refused", workspace_id=req.workspace_id, reason=str(refused))
        raise ApiError(
            401, "REGISTRATION_REFUSED", "registration token invalid, expired, used or not for this workspace"
        ) from None
    log.info("agent registered", workspace_id=ws["id"])
    return web.json_response(
        {
            "workspace_id": ws["id"],
            "workspace_token": workspace_token,
            "heartbeat_interval_seconds": request.app[SETTINGS].agent_heartbeat_interval_seconds,
        },
        headers={"Cache-Control": "no-store"},
    )


@routes.post("/registry/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    token = bearer_token(request)
    ws = await request.app[WORKSPACES].authenticate_workspace_token(token) if token else None
    if ws is None:
        raise ApiError(401, "UNAUTHORIZED", "heartbeat needs a live workspace token")
    # Per workspace, not per address: a VPC's agents reach the API through one NAT address.
    await limit_principal(request, f"workspace:{ws['id']}")
    req = AgentHeartbeatRequest.model_validate(await read_json(request))
    if req.workspace_id != ws["id"]:
        raise ApiError(403, "WORKSPACE_MISMATCH", "this token belongs to another workspace")
    if not await request.app[WORKSPACES].record_heartbeat(ws["id"], req.tasks_handled, req.avg_response_time_ms):
        raise ApiError(401, "UNAUTHORIZED", "heartbeat needs a live workspace token")
    return web.json_response({"ok": True})
