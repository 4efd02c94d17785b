"""Platform-issued secrets: org API keys (``tfk_``), registration tokens (``tfr_``), workspace
tokens (``tfw_``), operator tokens (``tfo_``) and the platform's credential for calling a
workspace's agent (``tfa_``).

A secret is ``<prefix>_<id>_<random>``: the prefix lets secret scanners recognise it, the id finds
its record, and only a SHA-256 of the whole secret is stored (the random part carries 256 bits,
so a fast hash is enough). Comparison is constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

ORG_KEY = "tfk"
REGISTRATION_TOKEN = "tfr"
WORKSPACE_TOKEN = "tfw"
OPERATOR_TOKEN = "tfo"
AGENT_ACCESS = "tfa"
_FORMAT = re.compile(r"(tf[krwo])_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class Minted:
    id: str
    secret: str
    hash: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(prefix: str) -> Minted:
    ident = secrets.token_hex(6)
    secret = f"{prefix}_{ident}_{secrets.token_urlsafe(32)}"
    return Minted(id=ident, secret=secret, hash=digest(secret))


def derive(prefix: str, key: str, context: str) -> Minted:
    """The same secret every time for one (key, context): a retried launch renders byte-identical
    user data. Unguessable without the key (HMAC-SHA256), and only its hash is stored."""
    if not key:
        raise ValueError("a signing key is required to derive secrets")

    def mac(label: str) -> bytes:
        return hmac.new(key.encode(), f"{prefix}:{label}:{context}".encode(), hashlib.sha256).digest()

    ident = mac("id").hex()[:12]
    secret = f"{prefix}_{ident}_{base64.urlsafe_b64encode(mac('secret')).decode().rstrip('=')}"
    return Minted(id=ident, secret=secret, hash=digest(secret))


def agent_access(key: str, workspace_id: str) -> Minted:
    """What the platform presents to a workspace's agent (``Authorization: Bearer``). Derived, so
    nothing is stored: the worker derives it again for every call, and the agent holds only its
    hash (from the user data), so neither the user data nor the agent's disk can call the agent."""
    return derive(AGENT_ACCESS, key, f"{workspace_id}:agent-access")


def parse(secret: str, prefix: str) -> str | None:
    """The record id of a well-formed secret of this kind, else None."""
    match = _FORMAT.fullmatch(secret or "")
    if not match or match.group(1) != prefix:
        return None
    return match.group(2)


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_hash)
