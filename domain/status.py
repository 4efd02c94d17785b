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


class OrphanDeletionStatus(StrEnum):
    """An operator's deletion of one named orphan (``orphan_deletions.status``)."""

    deleting = "deleting"
    deleted = "deleted"
    # It no longer existed: nothing to do.
    already_gone = "already_gone"
    # The re-check found it accounted for (the records changed since the report): left alone.
    refused = "refused"
    failed = "failed"


# Named deletions that count towards the reconcile cap: under way, done, or failed part-way.
CAPPED_ORPHAN_DELETIONS = frozenset(
    {OrphanDeletionStatus.deleting, OrphanDeletionStatus.deleted, OrphanDeletionStatus.failed}
)
