"""What the route modules share: the org a path names, and the live progress of its operation."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from api.auth import require_operator
from api.errors import ApiError
from api.state import ORGS, PROGRESS
from domain.operations import Progress
from domain.org_entity import legacy_run_id
from domain.status import OrgStatus

SLUG = re.compile(r"[a-z][a-z0-9-]{1,38}[a-z0-9]")
_TRANSITIONAL = {OrgStatus.provisioning, OrgStatus.suspending, OrgStatus.resuming, OrgStatus.deleting}


def slug_param(request: web.Request) -> str:
    slug = request.match_info["slug"]
    if not SLUG.fullmatch(slug):
        raise ApiError(400, "INVALID_SLUG", "slug must be 3-40 characters of a-z, 0-9 and '-', starting with a letter")
    return slug


async def org_or_404(request: web.Request) -> dict[str, Any]:
    """For operator routes under /cp/orgs/{slug}: authenticated, validated, existing."""
    await require_operator(request)
    slug = slug_param(request)
    row = await request.app[ORGS].get_by_slug(slug)
    if row is None:
        raise ApiError(404, "ORG_NOT_FOUND", f"no org '{slug}'")
    return row


def running_operation_id(row: dict[str, Any]) -> str | None:
    """The workflow of the operation in progress (runs from before the org entity existed
    recorded none, and are found from the status)."""
    if row["status"] not in _TRANSITIONAL:
        return None  # settled (an operation that just ended may not have cleared its column yet)
    if row.get("operation"):
        workflow_id: str | None = row["workflow_id"]
        return workflow_id
    return legacy_run_id(OrgStatus(row["status"]), row["id"])


async def org_progress(request: web.Request, row: dict[str, Any]) -> Progress | None:
    """The running operation's progress query; None when none runs or it cannot answer quickly."""
    workflow_id = running_operation_id(row)
    return await request.app[PROGRESS].get(workflow_id) if workflow_id else None
