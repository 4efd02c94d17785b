"""ProvisionWorkspaceWorkflow's input, result and signal, and what its steps take and return."""

from __future__ import annotations

from pydantic import BaseModel

from domain.status import WorkspaceStatus


class ProvisionWorkspaceInput(BaseModel):
    workspace_id: str
    org_id: str
    org_slug: str
    name: str
    role: str
    runtime: str
    tier: int
    model: str
    instance_type: str
    subnet_id: str
    security_group_id: str
    ami_id: str
    platform_url: str
    registration_timeout_seconds: float = 600
    agent_check_timeout_seconds: float = 120


class ProvisionWorkspaceResult(BaseModel):
    workspace_id: str
    status: WorkspaceStatus
    instance_id: str | None = None
    agent_url: str | None = None
    failure_reason: str | None = None


class AgentRegistration(BaseModel):
    """The ``agent_registered`` signal."""

    # Histories recorded before the platform derived agent URLs carry the agent's own.
    agent_url: str | None = None
    # SHA-256 (hex, of the DER) of the certificate the agent registered; None from agents (and
    # histories) from before agents served TLS.
    agent_cert_sha256: str | None = None


class InstanceRef(BaseModel):
    workspace_id: str
    org_id: str
    org_slug: str
    instance_id: str | None = None


class AgentCardCheck(BaseModel):
    workspace_id: str
    name: str
    agent_url: str
    # The registered certificate the worker pins (see AgentRegistration).
    agent_cert_sha256: str | None = None


class WorkspaceInstance(BaseModel):
    workspace_id: str
    instance_id: str
    # https://<private IP>:<agent port> (http:// before agents served TLS), derived by the platform
    # (None in histories from before).
    agent_url: str | None = None


class WorkspaceFailure(BaseModel):
    workspace_id: str
    reason: str
