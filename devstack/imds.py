"""The instance metadata service of one emulated instance, served on 169.254.169.254:80 inside its
network namespace (nowhere else).

IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600) returns a
session token; requests carrying ``X-aws-ec2-metadata-token`` must present a live one (else 401).
Requests without a token (IMDSv1) get 401 when the instance's ``MetadataOptions.HttpTokens`` is
``required``. A token PUT carrying ``X-Forwarded-For`` is refused (403), as EC2 does, and
``HttpEndpoint=disabled`` makes every request a 403.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_SECONDS = 21600


@dataclass
class InstanceMetadata:
    instance_id: str
    private_ip: str
    user_data: bytes | None
    http_tokens: str = "optional"  # MetadataOptions.HttpTokens
    http_endpoint: str = "enabled"
    _tokens: dict[str, float] = field(default_factory=dict, repr=False)  # token -> expiry (monotonic)

    def meta_data(self) -> dict[str, str]:
        return {
            "instance-id": self.instance_id,
            "local-ipv4": self.private_ip,
            "local-hostname": f"ip-{self.private_ip.replace('.', '-')}.ec2.internal",
        }


def _text(body: str | bytes) -> web.Response:
    return web.Response(body=body.encode() if isinstance(body, str) else body, content_type="text/plain")


def build_app(meta: InstanceMetadata) -> web.Application:
    def authorize(request: web.Request) -> None:
        if meta.http_endpoint != "enabled":
            raise web.HTTPForbidden()
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            if meta.http_tokens == "required":
                raise web.HTTPUnauthorized()
            return
        if meta._tokens.get(token, 0.0) < time.monotonic():
            raise web.HTTPUnauthorized()

    async def token(request: web.Request) -> web.Response:
        if meta.http_endpoint != "enabled" or "X-Forwarded-For" in request.headers:
            raise web.HTTPForbidden()
        try:
            ttl = int(request.headers[TOKEN_TTL_HEADER])
        except (KeyError, ValueError):
            raise web.HTTPBadRequest() from None
        if not 1 <= ttl <= MAX_TTL_SECONDS:
            raise web.HTTPBadRequest()
        now = time.monotonic()
        for stale in [t for t, expiry in meta._tokens.items() if expiry < now]:
            del meta._tokens[stale]
        value = secrets.token_urlsafe(32)
        meta._tokens[value] = now + ttl
        return web.Response(text=value, headers={TOKEN_TTL_HEADER: str(ttl)})

    async def meta_data(request: web.Request) -> web.Response:
        authorize(request)
        values = meta.meta_data()
        key = request.match_info["key"]
        if not key:
            return _text("\n".join(sorted(values)))
        if key not in values:
            raise web.HTTPNotFound()
        return _text(values[key])

    async def user_data(request: web.Request) -> web.Response:
        authorize(request)
        if meta.user_data is None:
            raise web.HTTPNotFound()
        return _text(meta.user_data)

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/latest/meta-data/{key:[a-z0-9-]*}", meta_data)
    app.router.add_get("/latest/user-data", user_data)
    return app
