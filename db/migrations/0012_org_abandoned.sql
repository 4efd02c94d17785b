-- The operation an operator abandoned on a parked step, while it is the org's latest word:
-- {"operation", "step", "by", "at", "reason"}. The entity writes it with the status the abandoned
-- operation leaves, and its next status change clears it.
ALTER TABLE orgs ADD COLUMN IF NOT EXISTS abandoned jsonb;
