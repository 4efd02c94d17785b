"""The statuses an org and a workspace record can have (their ``status`` columns)."""

from __future__ import annotations

from enum import StrEnum


class OrgStatus(StrEnum):
    provisioning = "provisioning"
    active = "active"
    failed = "failed"
    suspending = "suspending"
    suspended = "suspended"
    resuming = "resuming"
    deleting = "deleting"
    deleted = "deleted"


class WorkspaceStatus(StrEnum):
    provisioning = "provisioning"
    running = "running"
    stopped = "stopped"
    failed = "failed"
    deleting = "deleting"
    deleted = "deleted"


# Workspaces that hold (or are about to let go of) an instance: an org with any is not deleted
# without ``delete_workspaces``.
LIVE_WORKSPACES = frozenset(
    {WorkspaceStatus.provisioning, WorkspaceStatus.running, WorkspaceStatus.stopped, WorkspaceStatus.deleting}
)
