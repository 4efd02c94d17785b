-- Org API keys: only a hash is stored; the id is the visible part of the key (tfk_<id>_<secret>).
CREATE TABLE org_api_keys (
    id           text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name         text NOT NULL,
    key_hash     text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX org_api_keys_org ON org_api_keys (org_id);

-- Workspaces: one EC2 instance and one agent each. holds_slot counts against max_workspaces;
-- failed and deleted workspaces give their slot back.
CREATE TABLE workspaces (
    id                   text PRIMARY KEY,
    org_id               text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name                 text NOT NULL,
    role                 text NOT NULL,
    runtime              text NOT NULL,
    tier                 integer NOT NULL,
    model                text NOT NULL,
    status               text NOT NULL,
    holds_slot           boolean NOT NULL DEFAULT true,
    instance_id          text,
    instance_type        text NOT NULL,
    subnet_id            text NOT NULL,
    agent_url            text,
    failure_reason       text,
    workflow_id          text,
    registered_at        timestamptz,
    last_seen            timestamptz,
    tasks_handled        bigint NOT NULL DEFAULT 0,
    avg_response_time_ms double precision,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workspaces_org ON workspaces (org_id, created_at);
-- A name is unique among an org's live workspaces.
CREATE UNIQUE INDEX workspaces_live_name ON workspaces (org_id, name) WHERE holds_slot;

-- Registration tokens (one-time, expiring) and workspace tokens (for heartbeats): hashes only.
CREATE TABLE workspace_tokens (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('registration', 'workspace')),
    token_hash   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    used_at      timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX workspace_tokens_ws ON workspace_tokens (workspace_id, kind);
