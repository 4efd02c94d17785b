"""DeprovisionWorkspaceWorkflow's input (its steps take ``InstanceRef`` and the shared refs)."""

from __future__ import annotations

from pydantic import BaseModel


class DeprovisionWorkspaceInput(BaseModel):
    workspace_id: str
    org_id: str
    org_slug: str
