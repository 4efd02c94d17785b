-- Why an org is suspended (or anything else an operator should read beside its status).
ALTER TABLE orgs ADD COLUMN status_reason text;

-- Purge receipts outlive the org: no foreign key, looked up by slug.
CREATE TABLE org_receipts (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL UNIQUE,
    org_slug    text NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    workflow_id text,
    receipt     jsonb NOT NULL
);
CREATE INDEX org_receipts_slug ON org_receipts (org_slug, deleted_at DESC);
