-- Orgs: one row per customer org, the source of truth the status endpoint reads.
CREATE TABLE orgs (
    id                text PRIMARY KEY,
    slug              text NOT NULL UNIQUE,
    name              text NOT NULL,
    plan              text NOT NULL,
    vpc_id            text NOT NULL,
    subnet_ids        text[] NOT NULL,
    status            text NOT NULL,
    neon_mode         text NOT NULL,
    neon_project_id   text,
    neon_branch_id    text,
    security_group_id text,
    failure_reason    text,
    request_hash      text NOT NULL,
    workflow_id       text,
    run_id            text,
    max_workspaces    integer NOT NULL DEFAULT 10,
    max_tier          integer NOT NULL DEFAULT 3,
    billing_plan      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The resource ledger: every cloud resource is written here before it is created and updated
-- once it exists, so nothing can exist in the cloud without a record of it.
CREATE TABLE resources (
    id           bigserial PRIMARY KEY,
    org_id       text NOT NULL,
    org_slug     text NOT NULL,
    kind         text NOT NULL,          -- neon_branch, neon_project, security_group, ec2_instance
    business_key text NOT NULL UNIQUE,   -- the name/tag the resource is found by
    cloud_id     text,
    status       text NOT NULL,          -- pending, created, deleting, deleted
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX resources_org_id ON resources (org_id);

-- The audit trail is append-only and hash-chained; it deliberately has no foreign key to orgs
-- so that it outlives them.
CREATE TABLE audit_log (
    seq          bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    action       text NOT NULL,
    org_id       text,
    org_slug     text,
    resource_ids jsonb NOT NULL DEFAULT '{}'::jsonb,
    outcome      text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash    text NOT NULL,
    hash         text NOT NULL UNIQUE
);
CREATE INDEX audit_log_org_slug ON audit_log (org_slug, seq);

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
