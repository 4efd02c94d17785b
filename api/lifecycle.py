"""Operator routes for an org's lifecycle: suspend, resume, hard delete, retry and abandon of a
parked step (or of a failed onboarding), the teardowns under way, and the audit trail.

Each command goes to the org's entity workflow as an Update; its 202 means the org's new status is
recorded (the tenant's keys are refused from then on), and a command the org's state does not
allow is a 409 naming that state and the operation in progress."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from api.auth import principal, require_operator
from api.commands import send_command
from api.errors import ApiError, read_json
from api.lookup import SLUG, org_or_404, org_progress, slug_param
from api.orgs import org_view
from api.paging import name_filter, page_of, page_query
from api.schemas import DeleteOrgRequest, SuspendRequest
from api.state import AUDIT, ORGS, WORKSPACES
from api.versioning import v1
from domain.org_entity import DecisionCommand, DeleteCommand, OrgSnapshot, ResumeCommand, SuspendCommand
from domain.status import LIVE_WORKSPACES, OrgStatus
from workflows.org import OrgWorkflow

routes = web.RouteTableDef()
log = structlog.get_logger("tenantflow.api")


async def _optional_json(request: web.Request) -> dict[str, Any]:
    """The tutorial's suspend call sends no body: an empty body means defaults."""
    if not request.can_read_body:
        return {}
    body: dict[str, Any] = await read_json(request)
    return body


def _accepted(state: OrgSnapshot, **extra: object) -> web.Response:
    return web.json_response(
        {
            "slug": state.slug,
            "status": state.status.value,
            "operation": state.operation.value
            if state.operation
            else (state.queued[0].value if state.queued else None),
            "workflow_id": state.workflow_id,
            **extra,
        },
        status=202,
        headers={"Location": v1(f"/cp/orgs/{state.slug}"), "Retry-After": "2"},
    )


@routes.post("/cp/orgs/{slug}/suspend")
async def suspend(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    req = SuspendRequest.model_validate(await _optional_json(request))
    try:
        state = await send_command(
            request,
            org,
            OrgWorkflow.suspend,
            SuspendCommand(actor=principal(request), reason=req.reason, stop_instances=req.stop_instances),
        )
    except ApiError as refused:
        raise _already_suspended(refused, org) or refused from None
    log.info("org suspension accepted", org_slug=org["slug"], org_id=org["id"])
    return _accepted(state)


def _already_suspended(refused: ApiError, org: dict[str, Any]) -> ApiError | None:
    """A suspend of a suspended org, refused: the first reason stays, and the answer says so."""
    if refused.status != 409 or (refused.extra.get("org") or {}).get("status") != OrgStatus.suspended:
        return None
    first = org["status_reason"]
    return ApiError(
        409,
        "ORG_ALREADY_SUSPENDED",
        f"org '{org['slug']}' is already suspended"
        + (f" (reason: {first!r})" if first else " (no reason was given)")
        + "; that reason is kept. To suspend it for another reason, resume it first.",
        **refused.extra,
    )


@routes.post("/cp/orgs/{slug}/resume")
async def resume(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    state = await send_command(request, org, OrgWorkflow.resume, ResumeCommand(actor=principal(request)))
    log.info("org resume accepted", org_slug=org["slug"], org_id=org["id"])
    return _accepted(state)


@routes.delete("/cp/orgs/{slug}")
async def hard_delete(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    req = DeleteOrgRequest.model_validate(await _optional_json(request) or {"confirm": ""})
    if req.confirm != org["slug"]:
        raise ApiError(400, "CONFIRMATION_REQUIRED", f'"confirm" must equal the slug "{org["slug"]}" to delete it')
    live = [w for w in await request.app[WORKSPACES].list(org["id"]) if w["status"] in LIVE_WORKSPACES]
    if live and not req.delete_workspaces:
        raise ApiError(
            409,
            "ORG_HAS_WORKSPACES",
            f'org has {len(live)} workspace(s): send "delete_workspaces": true to terminate them with the org',
        )
    state = await send_command(request, org, OrgWorkflow.delete, DeleteCommand(actor=principal(request)))
    log.info("org deletion accepted", org_slug=org["slug"], org_id=org["id"])
    return _accepted(state)


async def _decide(request: web.Request, decision: str) -> web.Response:
    org = await org_or_404(request)
    update = OrgWorkflow.retry if decision == "retry" else OrgWorkflow.abandon
    before = await org_progress(request, org)
    state = await send_command(request, org, update, DecisionCommand(actor=principal(request)))
    log.info("operator decision", org_slug=org["slug"], decision=decision, step=before.step if before else None)
    return _accepted(state, decision=decision, step=before.step if before else None)


@routes.post("/cp/orgs/{slug}/retry")
async def retry(request: web.Request) -> web.Response:
    """Run a parked step again, or a failed onboarding again."""
    return await _decide(request, "retry")


@routes.post("/cp/orgs/{slug}/abandon")
async def abandon(request: web.Request) -> web.Response:
    """Stop the operation in progress on its parked step."""
    return await _decide(request, "abandon")


@routes.post("/cp/orgs/{slug}/teardown/retry")
async def retry_teardown(request: web.Request) -> web.Response:
    return await _decide(request, "retry")


@routes.post("/cp/orgs/{slug}/teardown/abandon")
async def abandon_teardown(request: web.Request) -> web.Response:
    return await _decide(request, "abandon")


@routes.get("/cp/teardowns")
async def list_teardowns(request: web.Request) -> web.Response:
    """Orgs being deleted, by slug (``?name=``, ``?limit=``, ``?cursor=``), with the step each is on
    and its state: ``running``, ``parked`` (a step waits for an operator's retry or abandon) or
    ``abandoned`` (an operator stopped it: who, when, why; a new delete starts it over)."""
    await require_operator(request)
    page = page_query(request, SLUG)
    orgs, next_cursor = page_of(
        await request.app[ORGS].page(
            statuses=[OrgStatus.deleting.value], name=name_filter(request), after=page.after, limit=page.limit + 1
        ),
        page,
        lambda row: str(row["slug"]),
    )
    result = []
    for org in orgs:
        progress = await org_progress(request, org)
        view = org_view(org, progress)
        parked = bool(progress and progress.waiting_for_operator)
        result.append(
            {
                "slug": org["slug"],
                "id": org["id"],
                "workflow_id": org["workflow_id"],
                "state": "abandoned" if view["abandoned"] else "parked" if parked else "running",
                "progress": progress.model_dump() if progress else None,
                "parked": parked,
                "failure_reason": view["failure_reason"],
                "abandoned": view["abandoned"],
            }
        )
    return web.json_response({"teardowns": result, "next_cursor": next_cursor})


_SEQ = re.compile(r"[0-9]{1,18}")
_ORG_ID = re.compile(r"org_[0-9a-f]{12}")
MAX_AUDIT_PAGE = 1000


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
        if value.tzinfo is None:
            raise ValueError(raw)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ApiError(
            400, "VALIDATION_FAILED", f"{name} must be an ISO 8601 time with a zone, e.g. 2026-11-01T00:00:00Z"
        ) from None


async def _audited_org(request: web.Request, slug: str) -> tuple[str, list[str]]:
    """The org whose trail is asked for (``?org_id=``, else the current org with the slug, else the
    last one that had it), and every org that has had the slug."""
    had_slug = await request.app[AUDIT].org_ids(slug)
    asked = request.query.get("org_id")
    if asked is not None:
        if not _ORG_ID.fullmatch(asked) or asked not in had_slug:
            raise ApiError(404, "ORG_NOT_FOUND", f"no audit records of an org {asked!r} with the slug '{slug}'")
        return asked, had_slug
    current = await request.app[ORGS].get_by_slug(slug)
    if current is not None:
        return current["id"], had_slug
    if not had_slug:
        raise ApiError(404, "ORG_NOT_FOUND", f"no audit records for '{slug}'")
    return had_slug[-1], had_slug


@routes.get("/cp/orgs/{slug}/audit")
async def org_audit(request: web.Request) -> web.Response:
    """One org's audit records (they outlive it), oldest first, a page at a time, and a
    verification of every chain against the newest anchor. Orgs that reused a slug never mix."""
    await require_operator(request)
    slug = slug_param(request)
    page = page_query(request, _SEQ, default=MAX_AUDIT_PAGE, maximum=MAX_AUDIT_PAGE)
    since, until = _time_param(request, "since"), _time_param(request, "until")
    org_id, had_slug = await _audited_org(request, slug)
    found, chain = await request.app[AUDIT].trail(
        org_id,
        after_seq=int(page.after) if page.after else None,
        since=since,
        until=until,
        limit=page.limit + 1,
    )
    records, next_cursor = page_of(found, page, lambda r: str(r["seq"]))
    for r in records:
        r["at"] = r["at"].isoformat()
    return web.json_response(
        {
            "org": slug,
            "org_id": org_id,
            "org_ids": had_slug,
            "records": records,
            "next_cursor": next_cursor,
            "chain": chain.summary(),
        }
    )


@routes.get("/cp/audit")
async def verify_audit(request: web.Request) -> web.Response:
    """Every audit chain, recomputed with the platform key and compared with the newest anchor."""
    await require_operator(request)
    return web.json_response({"chain": (await request.app[AUDIT].verify()).summary()})
