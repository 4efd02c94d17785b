"""Only the platform may call the agent: every request, the agent card included, must carry
``Authorization: Bearer <the platform's agent-access credential>``; anything else gets 401.

The agent knows only the credential's SHA-256 (from its boot config), so neither the user data nor
the agent's disk holds anything that could call it. The card is not public: it names the
workspace, its org and its model, and the A2A spec leaves access control of the card to the agent
(a card with sensitive content must be protected); the card itself declares the bearer scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

SCHEME_NAME = "platform"

_UNAUTHORIZED = json.dumps(
    {"error": "this agent answers the tenantflow platform only", "code": "UNAUTHORIZED"}
).encode()


def presented_bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def is_platform(token: str | None, credential_sha256: str) -> bool:
    presented = hashlib.sha256((token or "").encode()).hexdigest()
    # Compared even without a token, so that timing tells nothing either way.
    return hmac.compare_digest(presented, credential_sha256) and token is not None


class RequirePlatform:
    def __init__(self, app: ASGIApp, credential_sha256: str) -> None:
        if len(credential_sha256) != 64:
            raise ValueError("the platform credential's SHA-256 must be 64 hex digits")
        self.app = app
        self.credential_sha256 = credential_sha256.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_platform(presented_bearer(scope["headers"]), self.credential_sha256):
            await self.app(scope, receive, send)
            return
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
            (b"www-authenticate", b'Bearer realm="tenantflow-agent"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
