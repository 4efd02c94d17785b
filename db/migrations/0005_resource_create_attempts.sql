-- When a resource's creation was last attempted. Cloud APIs are eventually consistent: a
-- NotFound shortly after a create proves nothing, so "gone" is believed only once this is older
-- than the consistency window.
ALTER TABLE resources ADD COLUMN IF NOT EXISTS create_attempted_at timestamptz;
UPDATE resources SET create_attempted_at = created_at WHERE create_attempted_at IS NULL;
