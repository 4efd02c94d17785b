-- The operation the org's entity workflow is running now (onboard, suspend, resume, delete), if
-- any; workflow_id names that operation's workflow (or the last one).
ALTER TABLE orgs ADD COLUMN IF NOT EXISTS operation text;
CREATE INDEX IF NOT EXISTS orgs_status_slug ON orgs (status, slug);
-- What the org's resources cost beyond the plan (a Neon branch past the plan's included ones).
ALTER TABLE orgs ADD COLUMN IF NOT EXISTS cost_warning text;
