"""Org API keys: the operator mints, lists and revokes an org's keys; the tenant its own.
A key's secret appears in exactly one response, the one that minted it. A key mints only keys
with a subset of its own scopes that expire no later than itself."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from api.auth import principal, requires, tenant_org
from api.errors import ApiError, read_json
from api.lookup import org_or_404
from api.paging import name_filter, page_of, page_query
from api.schemas import KeyCreateRequest
from api.state import ORG_KEYS
from db.keys import KeyCapReached, OrgNotActive
from domain.scopes import ALL_SCOPES, Scope

routes = web.RouteTableDef()
_KEY_ID = re.compile(r"[0-9a-f]{12}")
# Beyond this a key should simply not expire; it also keeps every expiry a representable time.
MAX_LIFETIME = timedelta(days=3660)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def key_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": f"tfk_{row['id']}",
        "scopes": list(row["scopes"]),
        "expires_at": _iso(row["expires_at"]),
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "last_used_at": _iso(row["last_used_at"]),
        "revoked": row["revoked_at"] is not None,
    }


def _granted(req: KeyCreateRequest, minter: dict[str, Any] | None) -> tuple[list[str], datetime | None]:
    """The scopes and expiry a new key gets: what was asked, bounded by the minting key (None:
    the operator, who may grant anything)."""
    asked = [s.value for s in req.scopes] if req.scopes else None
    now = datetime.now(UTC)
    if req.expires_at is not None and not now < req.expires_at <= now + MAX_LIFETIME:
        raise ApiError(400, "VALIDATION_FAILED", "expires_at must be in the future and at most 10 years ahead")
    if minter is None:
        return list(dict.fromkeys(asked or ALL_SCOPES)), req.expires_at
    held = list(minter["key_scopes"])
    missing = sorted(set(asked or held) - set(held))
    if missing:
        raise ApiError(
            403,
            "SCOPE_EXCEEDED",
            f"a key can mint only keys with a subset of its own scopes; this key lacks: {', '.join(missing)}",
        )
    ceiling: datetime | None = minter["key_expires_at"]
    if ceiling is not None and req.expires_at is not None and req.expires_at > ceiling:
        raise ApiError(403, "EXPIRY_EXCEEDED", f"a key cannot mint a key that outlives it ({ceiling.isoformat()})")
    # Scopes in their canonical order; a key that expires passes its expiry on by default.
    return [s for s in ALL_SCOPES if s in (asked or held)], req.expires_at or ceiling


async def _mint(request: web.Request, org: dict[str, Any], actor: str, minter: dict[str, Any] | None) -> web.Response:
    req = KeyCreateRequest.model_validate(await read_json(request))
    scopes, expires_at = _granted(req, minter)
    try:
        row, secret = await request.app[ORG_KEYS].mint(org, req.name, actor=actor, scopes=scopes, expires_at=expires_at)
    except OrgNotActive as refused:
        raise ApiError(409, "ORG_NOT_ACTIVE", f"{refused}: keys are minted only for an active org") from None
    except KeyCapReached as full:
        raise ApiError(409, "KEY_LIMIT_REACHED", f"{full}: revoke a key first", max_live_keys=full.cap) from None
    return web.json_response({**key_view(row), "key": secret}, status=201, headers={"Cache-Control": "no-store"})


@routes.post("/cp/orgs/{slug}/keys")
async def operator_mint_key(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    return await _mint(request, org, principal(request), None)


async def _key_page(request: web.Request, org: dict[str, Any]) -> web.Response:
    """A page of the org's keys, oldest first: ``?name=``, ``?limit=``, ``?cursor=``."""
    page = page_query(request, _KEY_ID)
    rows, next_cursor = page_of(
        await request.app[ORG_KEYS].list(org["id"], name=name_filter(request), after=page.after, limit=page.limit + 1),
        page,
        lambda row: str(row["id"]),
    )
    return web.json_response({"keys": [key_view(r) for r in rows], "next_cursor": next_cursor})


def _key_id(request: web.Request) -> str | None:
    """The path's key id (``tfk_`` optional); None when it cannot be one."""
    key_id = request.match_info["key_id"].removeprefix("tfk_")
    return key_id if _KEY_ID.fullmatch(key_id) else None


async def _revoke(request: web.Request, org: dict[str, Any], actor: str) -> web.Response:
    key_id = _key_id(request)
    row = await request.app[ORG_KEYS].revoke(org, key_id, actor=actor) if key_id else None
    if row is None:
        raise ApiError(404, "KEY_NOT_FOUND", "no such key in this org")
    return web.json_response(key_view(row))


@routes.get("/cp/orgs/{slug}/keys")
async def operator_list_keys(request: web.Request) -> web.Response:
    return await _key_page(request, await org_or_404(request))


@routes.get("/cp/orgs/{slug}/keys/{key_id}")
async def operator_get_key(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    key_id = _key_id(request)
    row = await request.app[ORG_KEYS].get(org["id"], key_id) if key_id else None
    if row is None:
        raise ApiError(404, "KEY_NOT_FOUND", "no such key in this org")
    return web.json_response(key_view(row))


@routes.delete("/cp/orgs/{slug}/keys/{key_id}")
async def operator_revoke_key(request: web.Request) -> web.Response:
    org = await org_or_404(request)
    return await _revoke(request, org, principal(request))


@routes.get("/keys")
@requires(Scope.read)
async def list_keys(request: web.Request) -> web.Response:
    return await _key_page(request, tenant_org(request))


@routes.post("/keys")
@requires(Scope.keys_admin)
async def tenant_mint_key(request: web.Request) -> web.Response:
    org = tenant_org(request)
    return await _mint(request, org, f"org_key:{org['key_id']}", org)


@routes.delete("/keys/{key_id}")
@requires(Scope.keys_admin)
async def revoke_key(request: web.Request) -> web.Response:
    org = tenant_org(request)
    return await _revoke(request, org, f"org_key:{org['key_id']}")
