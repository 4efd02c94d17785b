"""The API's request bodies: validated strictly (unknown fields are refused), and the source the
OpenAPI contract (``openapi.yaml``) is checked against."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from domain.org_entity import Plan, Quotas
from domain.resources import Tier
from domain.scopes import Scope

# Slugs become subdomains, Neon branch names and AWS tags: DNS-label rules, 3 to 40 chars.
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")]
# Lenient on the suffix alphabet on purpose: the tutorial's sample ids are not pure hex. Whether the
# VPC and subnets exist is asked of EC2 before the org is accepted (api/network_check.py), and again
# by the onboarding workflow's first step.
VpcId = Annotated[str, StringConstraints(pattern=r"^vpc-[0-9a-z]{6,17}$")]
SubnetId = Annotated[str, StringConstraints(pattern=r"^subnet-[0-9a-z]{6,17}$")]
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
OrgName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=_PRINTABLE)]
WorkspaceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
Runtime = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,31}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")]
Role = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_PRINTABLE)]
KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_PRINTABLE)]
WorkspaceId = Annotated[str, StringConstraints(pattern=r"^ws_[0-9a-f]{12}$")]
# Older agents still send the URL they believe they serve on; it is accepted and ignored, because
# the platform dials the instance's private IP on the agent port (an agent-chosen URL made the
# worker fetch any host a token holder named).
IgnoredAgentUrl = Annotated[str, StringConstraints(max_length=500)] | None


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("subnet_ids must not repeat")
    return values


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreateRequest(Strict):
    name: OrgName
    slug: Slug
    plan: Plan
    vpc_id: VpcId
    subnet_ids: Annotated[list[SubnetId], Field(min_length=1, max_length=16), AfterValidator(_unique)]

    def request_hash(self) -> str:
        """Identifies the request, so a repeated POST is recognised and a different one refused."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


class OrgQuotaUpdate(Quotas):
    """``PATCH /orgs/{slug}``: the quotas to change (the org entity's ``set_quota`` command)."""


class WorkspaceCreateRequest(Strict):
    name: WorkspaceName
    role: Role
    runtime: Runtime
    tier: Tier
    model: ModelName


class KeyCreateRequest(Strict):
    name: KeyName
    # None: the minter's own scopes (the operator's: all of them).
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope))] | None = None
    # None: never, or the minting key's own expiry if it has one.
    expires_at: AwareDatetime | None = None


# The audit actor is operator:<name>: a plain identifier ("bootstrap" is the shared secret's).
OperatorName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9._-]{1,39}$")]


class OperatorTokenCreateRequest(Strict):
    name: OperatorName


# EC2 ids (i-..., sg-...) and Neon ids (br-..., project ids): letters, digits and dashes.
CloudId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,99}$")]


class OrphanDeletionRequest(Strict):
    """Delete one orphan that a reconcile report names."""

    report_id: int = Field(ge=1, le=999_999_999_999_999_999)
    cloud_id: CloudId


class AgentRegisterRequest(Strict):
    workspace_id: WorkspaceId
    agent_url: IgnoredAgentUrl = None
    # SHA-256 (hex) of the DER of the TLS certificate the agent serves; the worker pins it. Absent
    # only from agents launched before agents served TLS.
    agent_cert_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class AgentHeartbeatRequest(Strict):
    workspace_id: WorkspaceId
    # Bounded so that sums over a fleet stay inside Postgres bigint / double precision.
    tasks_handled: Annotated[int, Field(strict=True, ge=0, le=2**40)]
    avg_response_time_ms: Annotated[float, Field(ge=0, le=86_400_000)] | None = None
    agent_url: IgnoredAgentUrl = None


class SuspendRequest(Strict):
    reason: Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    stop_instances: bool = False


class DeleteOrgRequest(Strict):
    confirm: str | bool
    delete_workspaces: bool = False
