"""Calls a registered agent over A2A: HTTPS to the certificate it registered (pinned), with the
platform's credential for that workspace; the check that its card describes its workspace.

Pinning: a first TLS connection, which sends nothing, reads the certificate the address presents;
anything but the registered fingerprint is ``AgentCertMismatch`` (permanent) before the credential
is ever sent. That certificate then becomes the only trust anchor of the real connection (hostname
check off: the pin is the identity), so whoever answers it must also hold the certificate's key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.errors import AgentCardResolutionError
from temporalio import activity

from activities.errors import permanent, transient
from domain import credentials
from domain.provision_workspace import AgentCardCheck
from domain.settings import Settings

# The agent runtime tags a skill with this, so the platform can tell which workspace a card is.
WORKSPACE_SKILL_TAG = "workspace:{workspace_id}"
CONNECT_TIMEOUT_SECONDS = 10.0


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    return ctx


async def presented_certificate(host: str, port: int) -> bytes:
    """The DER certificate that ``host:port`` presents (unverified: only its fingerprint counts)."""
    ctx = _client_context()
    ctx.verify_mode = ssl.CERT_NONE
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx), timeout=CONNECT_TIMEOUT_SECONDS
    )
    try:
        der: bytes | None = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    if not der:
        raise ssl.SSLError("no certificate presented")
    return der


def pinned_context(der: bytes) -> ssl.SSLContext:
    """Trusts exactly this certificate and nothing else."""
    ctx = _client_context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=der)
    return ctx


@asynccontextmanager
async def pinned_client(agent_url: str, cert_sha256: str, credential: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for one agent: only the registered certificate, and the platform's credential.

    Raises ``AgentCertMismatch`` (permanent) for another certificate, ``AgentUnreachable``
    (transient) when nothing answers."""
    parts = urlsplit(agent_url)
    if parts.scheme != "https" or not parts.hostname:
        raise permanent("AgentCertMismatch", f"{agent_url} is not an https URL; the agent's certificate is pinned")
    try:
        der = await presented_certificate(parts.hostname, parts.port or 443)
    except (OSError, TimeoutError, ssl.SSLError) as err:
        raise transient("AgentUnreachable", f"agent at {agent_url} unreachable: {type(err).__name__}: {err}") from err
    presented = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(presented, cert_sha256.lower()):
        raise permanent(
            "AgentCertMismatch",
            f"agent at {agent_url} presented certificate sha256:{presented}, "
            f"not the registered sha256:{cert_sha256}: refusing to talk to it",
        )
    async with httpx.AsyncClient(
        verify=pinned_context(der),
        headers={"Authorization": f"Bearer {credential}"},
        timeout=CONNECT_TIMEOUT_SECONDS,
        trust_env=False,  # a proxy configured for the platform must not sit between it and the agent
    ) as http:
        yield http


def _cert_mismatch(err: BaseException) -> bool:
    """The real connection refused the pinned certificate: someone else now answers there."""
    while err is not None:
        if isinstance(err, ssl.SSLCertVerificationError):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


class AgentActivities:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def credential(self, workspace_id: str) -> str:
        key = self._settings.token_signing_key.get_secret_value()
        if not key:
            raise permanent("TokenSigningKeyMissing", "TENANTFLOW_TOKEN_SIGNING_KEY is not set on the worker")
        return credentials.agent_access(key, workspace_id).secret

    @activity.defn
    async def check_agent_card(self, check: AgentCardCheck) -> None:
        if check.agent_url.startswith("http://"):
            # Launched before agents served TLS (the URL comes from that launch's recorded result):
            # such an agent has neither a certificate nor a credential check.
            async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT_SECONDS, trust_env=False) as http:
                await self._check_card(http, check)
            return
        if not check.agent_cert_sha256:
            raise permanent("AgentCertMismatch", f"agent of {check.workspace_id} registered no certificate")
        async with pinned_client(check.agent_url, check.agent_cert_sha256, self.credential(check.workspace_id)) as http:
            await self._check_card(http, check)

    async def _check_card(self, http: httpx.AsyncClient, check: AgentCardCheck) -> None:
        try:
            card = await A2ACardResolver(http, check.agent_url).get_agent_card()
        except (httpx.TransportError, AgentCardResolutionError) as err:
            if _cert_mismatch(err):
                raise permanent(
                    "AgentCertMismatch", f"agent at {check.agent_url} no longer presents the registered certificate"
                ) from err
            # Unreachable or not yet serving: the agent may still be starting, so retry until the
            # step's deadline, after which the workspace fails with this message.
            raise transient("AgentUnreachable", f"agent card at {check.agent_url} unavailable: {err}") from err
        tag = WORKSPACE_SKILL_TAG.format(workspace_id=check.workspace_id)
        tags = {t for skill in card.skills for t in skill.tags}
        if tag not in tags:
            raise permanent(
                "AgentCardMismatch", f"agent at {check.agent_url} does not serve workspace {check.workspace_id}"
            )
        if not card.skills:
            raise permanent("AgentCardMismatch", "agent card lists no skills")
        activity.logger.info(
            "agent card checked",
            extra={"workspace_id": check.workspace_id, "agent_name": card.name, "skills": len(card.skills)},
        )
