-- Two roles. The owner (the role that runs these migrations) owns every table; the API and the
-- worker connect as tenantflow_app, which gets only the grants it needs: it can never alter a
-- table, control its triggers or truncate it, and it can only INSERT and SELECT the audit trail.
-- Creating a role needs CREATEROLE: where the owner lacks it, create the role first (with LOGIN and
-- a password) as an administrator; the local stack and the tests do.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantflow_app') THEN
        CREATE ROLE tenantflow_app NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role tenantflow_app is missing: CREATE ROLE tenantflow_app LOGIN PASSWORD ''...'' first';
END
$$;

GRANT USAGE ON SCHEMA public TO tenantflow_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenantflow_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO tenantflow_app;
-- Tables and sequences later migrations create get the same grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO tenantflow_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO tenantflow_app;
REVOKE ALL ON schema_migrations FROM tenantflow_app;
GRANT SELECT ON schema_migrations TO tenantflow_app;
REVOKE ALL ON audit_log FROM tenantflow_app;
GRANT SELECT, INSERT ON audit_log TO tenantflow_app;

-- The chain format, per record. 1: the records written before this migration, one global chain of
-- plain SHA-256. 2: every record since, HMAC-SHA256 with the platform's audit key, chained per org
-- (records without an org form the 'platform' chain); each chain's first record links to the last
-- version-1 record, so the old history stays covered. Every insert names its version.
ALTER TABLE audit_log ADD COLUMN version smallint NOT NULL DEFAULT 1 CHECK (version IN (1, 2));
ALTER TABLE audit_log ALTER COLUMN version DROP DEFAULT;
CREATE INDEX audit_log_chain_v2 ON audit_log ((coalesce(org_id, 'platform')), seq) WHERE version = 2;
CREATE INDEX audit_log_v1 ON audit_log (seq) WHERE version = 1;
