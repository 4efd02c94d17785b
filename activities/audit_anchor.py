"""Anchoring the audit trail: every chain's head, written to the write-once store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity

from activities.errors import permanent
from db import audit
from db.audit_anchors import AnchorStore, AnchorStoreError
from db.pool import Pool
from domain.audit import AnchorWritten, AuditAnchor


class AuditAnchorActivities:
    def __init__(self, pool: Pool, store: AnchorStore):
        self._pool = pool
        self._store = store

    @activity.defn
    async def anchor_audit_heads(self) -> AnchorWritten:
        """Verifies every chain against the newest anchor, then anchors the heads it read. A broken
        chain is never anchored: that would bless deleted or rewritten records."""
        previous = await self._store.newest_async()
        async with self._pool.connection() as conn:
            check = await audit.verify_chain(conn, previous)
        if not check.valid:
            raise permanent("AuditChainBroken", f"not anchored: record {check.first_broken_seq} {check.reason}")
        anchor = AuditAnchor(at=datetime.now(UTC), heads=check.heads)
        try:
            key = await asyncio.to_thread(self._store.write, anchor)
        except AnchorStoreError as err:
            raise permanent("AuditAnchorStore", str(err)) from err
        activity.logger.info("audit heads anchored", extra={"key": key, "chains": len(anchor.heads)})
        return AnchorWritten(key=key, at=anchor.at, chains=len(anchor.heads), records=check.records)
