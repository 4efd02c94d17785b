"""Named operator tokens: an operator (with a token, or the deprecated bootstrap secret) creates,
lists and revokes them. A token's secret appears only in the response that created it.

Rotation: create a second token with the same name, move the operator's tooling to it, revoke
the first. Both work in between; the audit names the operator either way."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from api.auth import BOOTSTRAP_PRINCIPAL, require_operator
from api.errors import ApiError, read_json
from api.paging import name_filter, page_of, page_query
from api.schemas import OperatorTokenCreateRequest
from api.state import OPERATOR_TOKENS
from api.versioning import API_V1
from db.operators import NameFull

# New routes: canonical paths only, no deprecated mirror.
routes = web.RouteTableDef()
_TOKEN_ID = re.compile(r"^(?:tfo_)?([0-9a-f]{12})$")
_CURSOR = re.compile(r"[0-9a-f]{12}")


def token_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": f"tfo_{row['id']}",
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "last_used_at": row["last_used_at"].isoformat() if row["last_used_at"] else None,
        "revoked": row["revoked_at"] is not None,
    }


@routes.post(f"{API_V1}/operator-tokens")
async def create_operator_token(request: web.Request) -> web.Response:
    actor = await require_operator(request)
    req = OperatorTokenCreateRequest.model_validate(await read_json(request))
    if f"operator:{req.name}" == BOOTSTRAP_PRINCIPAL:
        raise ApiError(400, "VALIDATION_FAILED", "'bootstrap' names the shared provision secret: choose another name")
    try:
        row, secret = await request.app[OPERATOR_TOKENS].create(req.name, actor=actor)
    except NameFull as full:
        raise ApiError(409, "OPERATOR_TOKEN_LIMIT", str(full)) from None
    return web.json_response({**token_view(row), "token": secret}, status=201, headers={"Cache-Control": "no-store"})


@routes.get(f"{API_V1}/operator-tokens")
async def list_operator_tokens(request: web.Request) -> web.Response:
    """Tokens oldest first, revoked ones included: ``?name=``, ``?limit=``, ``?cursor=``."""
    await require_operator(request)
    page = page_query(request, _CURSOR)
    rows, next_cursor = page_of(
        await request.app[OPERATOR_TOKENS].list(name=name_filter(request), after=page.after, limit=page.limit + 1),
        page,
        lambda row: str(row["id"]),
    )
    return web.json_response({"tokens": [token_view(r) for r in rows], "next_cursor": next_cursor})


@routes.delete(API_V1 + "/operator-tokens/{token_id}")
async def revoke_operator_token(request: web.Request) -> web.Response:
    actor = await require_operator(request)
    match = _TOKEN_ID.fullmatch(request.match_info["token_id"])
    row = await request.app[OPERATOR_TOKENS].revoke(match.group(1), actor=actor) if match else None
    if row is None:
        raise ApiError(404, "OPERATOR_TOKEN_NOT_FOUND", "no such operator token")
    return web.json_response(token_view(row))
