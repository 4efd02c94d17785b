-- An org's audit trail is read by its id (a slug is free again once its org is deleted, so two
-- orgs may share one), a page at a time in record order.
CREATE INDEX IF NOT EXISTS audit_log_org_id ON audit_log (org_id, seq);
