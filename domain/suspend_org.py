"""SuspendOrgWorkflow's and ResumeOrgWorkflow's inputs, and what their power steps take."""

from __future__ import annotations

from pydantic import BaseModel


class SuspendOrgInput(BaseModel):
    org_id: str
    slug: str
    reason: str | None = None
    stop_instances: bool = False


class ResumeOrgInput(BaseModel):
    org_id: str
    slug: str


class WorkspaceInstances(BaseModel):
    org_id: str
    org_slug: str
    workspace_ids: list[str]
