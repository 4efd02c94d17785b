"""One settings model, read from the environment (prefix ``TENANTFLOW_``).

The defaults describe the embedded local stack (whose own ports and state directory are in
``devstack.settings``); every one of them can be overridden by an
environment variable of the same name, upper-cased, with the prefix. The Temporal connection is
not here on purpose: it comes from the SDK's own environment configuration (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*`` or a ``temporal.toml`` profile), so
the same worker and API run against a local dev server, a cluster or Temporal Cloud unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.neon_plans import NeonPlan
from domain.resources import NeonMode


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TENANTFLOW_", extra="ignore")

    # Platform database (psycopg 3 conninfo or URL).
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:55432/tenantflow")
    # The schema owner's URL, used only to apply migrations (the owner grants the application role
    # what it needs). Unset: database_url migrates, as before the two roles.
    migration_database_url: SecretStr | None = None
    database_pool_min: int = 1
    database_pool_max: int = 10

    # Operator authentication: named operator tokens (tfo_..., POST /api/v1/operator-tokens), or
    # this shared secret, kept as a deprecated bootstrap (its uses are logged and flagged).
    provision_secret: SecretStr = SecretStr("")
    # How many unrevoked, unexpired API keys one org may hold at once.
    max_live_keys_per_org: int = 25

    # API server.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # Where tenants and agents reach the API (used in boot user data and Location headers).
    public_url: str = "http://127.0.0.1:8080"

    # Rate limit of the API: a token bucket per authenticated principal (org, operator) and per
    # client address (requests that did not authenticate), shared by every API replica through the
    # platform database (api/ratelimit.py).
    rate_limit_per_minute: float = 1200.0
    rate_limit_burst: int = 200
    # How many proxies in front of the API append to X-Forwarded-For (0: the peer's address is the
    # client's; 1 behind one load balancer). An entry further left is the client's own claim.
    trusted_proxy_hops: int = 0

    # Temporal.
    task_queue: str = "tenantflow"
    # The worker's /healthz, /readyz and /metrics (the SDK's Prometheus metrics, proxied from a
    # loopback-only exporter on worker_sdk_metrics_port).
    worker_health_host: str = "127.0.0.1"
    worker_health_port: int = 9091
    worker_sdk_metrics_port: int = 9464
    # How long a command (suspend, resume, delete, ...) waits for the org's workflow to accept it.
    command_timeout_seconds: float = 15.0
    # How long the status endpoint waits for a live progress query before answering from the
    # database record instead.
    progress_query_timeout_seconds: float = 2.0

    # AWS. Credentials come from boto3's standard chain; the endpoint is only set for moto.
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    # Security groups admit TCP agent_port from this CIDR only (the platform's egress range).
    platform_cidr: str = "10.0.0.0/16"
    # How long after creating an EC2 resource a NotFound is read as "not visible yet" rather than
    # "gone": EC2 is eventually consistent, and a NotFound right after a create proves nothing.
    ec2_consistency_window_seconds: float = 120.0
    # Read timeout of one EC2 call (Temporal retries; a lost answer is recovered by ClientToken).
    aws_read_timeout_seconds: float = 30.0

    # Neon.
    neon_api_key: SecretStr = SecretStr("")
    neon_base_url: str = "https://console.neon.tech/api/v2/"
    # "branch": one branch per tenant inside neon_project_id (Neon plans allow 10-25 branches per
    # project). "project": one project per tenant, for fleets beyond that.
    neon_mode: NeonMode = "branch"
    neon_project_id: str = ""
    neon_parent_branch_id: str | None = None
    neon_request_timeout_seconds: float = 30.0
    neon_region_id: str = "aws-us-east-1"
    # The Neon account's plan (domain/neon_plans.py): branch mode refuses a tenant branch beyond
    # the plan's per-project cap and reports a cost warning for branches billed as extras.
    neon_plan: NeonPlan = "launch"

    # Workspaces.
    # How long a launched agent has to register before its instance is terminated.
    registration_timeout_seconds: float = 600.0
    # How long the platform keeps trying to fetch a registered agent's A2A card.
    agent_check_timeout_seconds: float = 120.0
    agent_ami_id: str = "ami-12c6146b"
    # The port agents serve A2A on; the org's security group admits it from platform_cidr only,
    # and the platform dials http://<instance private IP>:<agent_port> (never a URL an agent reports).
    agent_port: int = 443
    # Derives each launch's one-time registration token (HMAC), so a retried RunInstances renders
    # byte-identical user data and EC2's ClientToken idempotency returns the first instance. Only
    # the worker needs it; the API checks tokens against their stored hashes.
    token_signing_key: SecretStr = SecretStr("")
    agent_heartbeat_interval_seconds: float = 15.0
    # An agent counts as active when its last heartbeat is this recent.
    active_agent_window_seconds: float = 90.0

    # Reconciliation: a Temporal Schedule compares what exists with the ledger and the org rows.
    reconcile_interval_seconds: float = 3600.0
    # Dry-run unless enabled; even then at most this many deletions, and at most this share of the
    # whole managed fleet, per run (above either cap nothing is deleted).
    reconcile_delete_enabled: bool = False
    reconcile_max_deletes: int = 10
    reconcile_max_delete_fraction: float = 0.25

    # Audit trail: each org's chain is keyed with this HMAC key, and the heads of every chain are
    # anchored to an S3 bucket with Object Lock (compliance mode) every audit_anchor_interval_seconds.
    audit_hmac_key: SecretStr = SecretStr("")
    audit_anchor_bucket: str = "tenantflow-audit-anchors"
    # Unset: AWS's endpoint (a real bucket); the local stack sets its moto S3 server.
    audit_anchor_endpoint_url: str | None = None
    audit_anchor_interval_seconds: float = 300.0
    audit_anchor_retention_days: int = 2555

    # Logging.
    log_level: str = "INFO"

    def migration_url(self) -> str | None:
        return self.migration_database_url.get_secret_value() if self.migration_database_url else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
