"""HardDeleteOrgWorkflow's input and result (the receipt that outlives the org)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from domain.resources import NeonMode


class HardDeleteOrgInput(BaseModel):
    """Everything the cascade needs, so that it can re-run (or be reset) after the row is gone."""

    org_id: str
    slug: str
    vpc_id: str
    neon_mode: NeonMode


class PurgeReceipt(BaseModel):
    org_id: str
    slug: str
    deleted_at: str
    workflow_id: str | None = None
    resources: list[dict[str, Any]]
    workspaces: list[dict[str, Any]]
    keys_revoked: int
