"""Step inputs that several workflows share: which org or workspace a step is about, a status
change of the org record, an audit record, another workflow to stop or wait for."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from domain.status import OrgStatus, WorkspaceStatus


class OrgRef(BaseModel):
    org_id: str
    slug: str


class WorkspaceRef(BaseModel):
    workspace_id: str


class WorkflowToStop(BaseModel):
    workflow_id: str


class OrgStatusChange(BaseModel):
    org_id: str
    slug: str
    status: OrgStatus
    reason: str | None = None
    # Only change the status when it is currently one of these (empty: any).
    only_from: list[OrgStatus] = []


class WorkspacesStatusChange(BaseModel):
    """Move the org's workspaces that are in one of ``only_from`` to ``status``."""

    org_id: str
    slug: str
    status: WorkspaceStatus
    only_from: list[WorkspaceStatus] = []


class WorkspaceQuery(BaseModel):
    org_id: str
    statuses: list[WorkspaceStatus]


class AuditEntry(BaseModel):
    org_id: str
    slug: str
    action: str
    outcome: str = "ok"
    actor: str = "workflow"
    detail: dict[str, Any] = {}
