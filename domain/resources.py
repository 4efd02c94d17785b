"""What the platform's cloud resources are called, how they are tagged, under which key the ledger
records them, and which EC2 instance states count as still there.

The one place these are built and parsed: the activities that create and delete resources find
them by these names and tags, reconciliation reads them back, and the tools and the local stack
count them the same way.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field


class ResourceKind(StrEnum):
    """What a ledger row (and a reconcile finding) is about."""

    ec2_instance = "ec2_instance"
    security_group = "security_group"
    neon_branch = "neon_branch"
    neon_project = "neon_project"


class LedgerStatus(StrEnum):
    """A ledger row: recorded before the create (pending), after it (created), around the delete."""

    pending = "pending"
    created = "created"
    deleting = "deleting"
    deleted = "deleted"


# -- names ----------------------------------------------------------------------------------------

NAME_PREFIX = "tf-"
# resource_name(): tf-<slug>-<the org id's 12 hex digits>
_RESOURCE_NAME = re.compile(r"^tf-(?P<slug>[a-z][a-z0-9-]*[a-z0-9])-(?P<hex>[0-9a-f]{12})$")


def resource_name(slug: str, org_id: str) -> str:
    """Name of an org's Neon branch/project and security group: found by it, unique per org."""
    return f"{NAME_PREFIX}{slug}-{org_id.removeprefix('org_')}"


def org_of_name(name: str) -> tuple[str | None, str | None]:
    """(org id, slug) from a ``resource_name``, or (None, None) if it is not one."""
    match = _RESOURCE_NAME.fullmatch(name)
    return (f"org_{match['hex']}", match["slug"]) if match else (None, None)


def instance_name(org_slug: str, workspace_name: str) -> str:
    """The ``Name`` tag of a workspace's instance (names are per org, so not unique across orgs)."""
    return f"{NAME_PREFIX}{org_slug}-{workspace_name}"


# Where a tenant database lives: a branch of the platform's Neon project, or a project of its own.
NeonMode = Literal["branch", "project"]


def neon_kind(mode: NeonMode) -> ResourceKind:
    """The tenant database's kind in the ledger, by Neon mode (``branch`` or ``project``)."""
    return ResourceKind.neon_branch if mode == "branch" else ResourceKind.neon_project


# -- ledger business keys ------------------------------------------------------------------------


def business_key(kind: ResourceKind, name: str) -> str:
    """The ledger's key of a resource: ``<kind>:<name>`` (an instance's name is its workspace id)."""
    return f"{kind.value}:{name}"


def instance_key(workspace_id: str) -> str:
    return business_key(ResourceKind.ec2_instance, workspace_id)


def name_of_key(key: str) -> str:
    """The name part of a business key (the workspace id, for an instance)."""
    return key.split(":", 1)[1]


# -- EC2 tags ------------------------------------------------------------------------------------

MANAGED_TAG = "tenantflow:managed"
ORG_ID_TAG = "tenantflow:org-id"
ORG_SLUG_TAG = "tenantflow:org-slug"
WORKSPACE_TAG = "tenantflow:workspace-id"


def org_tags(org_id: str, slug: str, name: str) -> list[dict[str, str]]:
    """The tags of everything the platform creates for an org (its security group)."""
    return [
        {"Key": "Name", "Value": name},
        {"Key": MANAGED_TAG, "Value": "true"},
        {"Key": ORG_ID_TAG, "Value": org_id},
        {"Key": ORG_SLUG_TAG, "Value": slug},
    ]


def instance_tags(org_id: str, org_slug: str, workspace_id: str, workspace_name: str) -> list[dict[str, str]]:
    """A workspace instance's tags (on the instance and its volume)."""
    return [
        *org_tags(org_id, org_slug, instance_name(org_slug, workspace_name)),
        {"Key": WORKSPACE_TAG, "Value": workspace_id},
    ]


def tag_filter(key: str, *values: str) -> dict[str, Any]:
    """An EC2 ``Filters`` entry for a tag."""
    return {"Name": f"tag:{key}", "Values": list(values)}


MANAGED = tag_filter(MANAGED_TAG, "true")


def tags_of(item: dict[str, Any]) -> dict[str, str]:
    """An EC2 instance's or security group's tags as a dict."""
    return {t["Key"]: t["Value"] for t in item.get("Tags") or []}


# -- EC2 instance states -------------------------------------------------------------------------

# An instance that exists and is the platform's to run, stop or start.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# Not terminated yet: what a teardown waits on, what reconciliation and the tools count.
PRESENT_STATES = (*LIVE_STATES, "shutting-down")
# On its way out, or out: it will never run again.
GONE_STATES = frozenset({"shutting-down", "terminated"})
# Not running (or about to be), whatever comes next.
HALTED_STATES = frozenset({"stopping", "stopped", *GONE_STATES})
STATE_FILTER = "instance-state-name"


def state_filter(*states: str) -> dict[str, Any]:
    return {"Name": STATE_FILTER, "Values": list(states)}


# -- workspace instance types ----------------------------------------------------------------------

Tier = Annotated[int, Field(strict=True, ge=1, le=4)]
# Documented tier -> EC2 instance type mapping (README "Workspaces").
TIER_INSTANCE_TYPES = {1: "t3.small", 2: "t3.medium", 3: "t3.large", 4: "t3.xlarge"}
