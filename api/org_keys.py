"""Org API keys: the operator mints one for an org; the tenant lists, mints and revokes its own.
A key's secret appears in exactly one response, the one that minted it."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from api.auth import require_org_key
from api.errors import ApiError, read_json
from api.lookup import org_or_404
from api.schemas import KeyCreateRequest
from api.state import ORG_KEYS
from db.keys import OrgNotActive

routes = web.RouteTableDef()
_KEY_ID = re.compile(r"[0-9a-f]{12}")


def key_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": f"tfk_{row['id']}",
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "last_used_at": row["last_used_at"].isoformat() if row["last_used_at"] else None,
        "revoked": row["revoked_at"] is not None,
    }


async def _mint(request: web.Request, org: dict[str, Any], actor: str) -> web.Response:
    req = KeyCreateRequest.model_validate(await read_json(request))
    try:
        row, secret = await request.app[ORG_KEYS].mint(org, req.name, actor=actor)
    except OrgNotActive as refused:
        raise ApiError(409, "ORG_NOT_ACTIVE", f"{refused}: keys are minted only for an active org") from None
    return web.json_response({**key_view(row), "key": secret}, status=201, headers={"Cache-Control": "no-store"})


@routes.post("/cp/orgs/{slug}/keys")
async def operator_mint_key(request: web.Request) -> web.Response:
    return await _mint(request, await org_or_404(request), "operator")


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    org = await require_org_key(request)
    return web.json_response({"keys": [key_view(r) for r in await request.app[ORG_KEYS].list(org["id"])]})


@routes.post("/keys")
async def tenant_mint_key(request: web.Request) -> web.Response:
    org = await require_org_key(request)
    return await _mint(request, org, f"org_key:{org['key_id']}")


@routes.delete("/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    org = await require_org_key(request)
    key_id = request.match_info["key_id"].removeprefix("tfk_")
    row = (
        await request.app[ORG_KEYS].revoke(org, key_id, actor=f"org_key:{org['key_id']}")
        if _KEY_ID.fullmatch(key_id)
        else None
    )
    if row is None:
        raise ApiError(404, "KEY_NOT_FOUND", "no such key in this org")
    return web.json_response(key_view(row))
