"""Operator authentication: ``Authorization: Bearer <provision secret>``, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from api.errors import ApiError
from api.keys import SETTINGS


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_operator(request: web.Request) -> None:
    expected = request.app[SETTINGS].provision_secret.get_secret_value()
    token = bearer_token(request)
    # An unset secret refuses everyone rather than admitting an empty bearer.
    if not expected or token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "UNAUTHORIZED", "operator credentials required: Authorization: Bearer <provision secret>")
