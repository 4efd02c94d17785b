-- Token buckets of the API's rate limits, shared by every API replica: one row per client address
-- (before authentication) or authenticated principal (org, operator), refilled and taken from in
-- one atomic statement (db/ratelimit.py). UNLOGGED: a crash of the database forgets the buckets,
-- which only refills them; in exchange no write-ahead log is written for every request. The low
-- fillfactor leaves room on each page for the row's next version (HOT updates, no index to touch).
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_buckets (
    key text PRIMARY KEY,
    tokens double precision NOT NULL,
    admitted boolean NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (fillfactor = 50);
