-- Scoped, expiring org API keys. Keys minted before scopes existed keep every scope, so no
-- current tenant loses access; from now on the API always writes the scopes it grants.
ALTER TABLE org_api_keys ADD COLUMN IF NOT EXISTS scopes text[] NOT NULL
    DEFAULT ARRAY['read', 'workspaces:write', 'keys:admin'];
ALTER TABLE org_api_keys ALTER COLUMN scopes DROP DEFAULT;
ALTER TABLE org_api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz;
-- Counting an org's live keys (the cap) reads only unrevoked rows.
CREATE INDEX IF NOT EXISTS org_api_keys_unrevoked ON org_api_keys (org_id) WHERE revoked_at IS NULL;

-- Named operator credentials (tfo_<id>_<secret>): only a hash is stored. A name may hold two
-- live tokens at once, the old and the new one of a rotation.
CREATE TABLE IF NOT EXISTS operator_tokens (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    token_hash   text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS operator_tokens_live_name ON operator_tokens (name) WHERE revoked_at IS NULL;
