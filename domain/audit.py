"""The audit trail's shared contracts: chain names, chain heads and the anchors written to the
write-once store (an S3 bucket with Object Lock in compliance mode)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

# Records without an org are chained together under this name (org ids are org_<hex>).
PLATFORM_CHAIN = "platform"
# The global chain of plain SHA-256 records written before the keyed, per-org format.
LEGACY_CHAIN = "v1"

AUDIT_ANCHOR_SCHEDULE_ID = "tenantflow-audit-anchor"
AUDIT_ANCHOR_WORKFLOW_ID = "audit-anchor"


def chain_of(org_id: str | None) -> str:
    return org_id or PLATFORM_CHAIN


class ChainHead(BaseModel):
    """The newest record of one chain."""

    seq: int
    hash: str
    org_slug: str | None = None


class AuditAnchor(BaseModel):
    """Every chain's head at one moment; once written to the store it can be neither changed nor
    deleted, so a database that lost or rewrote an anchored record no longer matches it."""

    at: datetime
    heads: dict[str, ChainHead]


class AnchorWritten(BaseModel):
    key: str
    at: datetime
    chains: int
    records: int
