-- One row per reconciliation run: what it found, what it deleted, and whether the deletion caps
-- held it back. A Reset replays a run under a new run id, hence the key on both ids.
CREATE TABLE reconcile_reports (
    id           bigserial PRIMARY KEY,
    workflow_id  text NOT NULL,
    run_id       text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    dry_run      boolean NOT NULL,
    cap_exceeded boolean NOT NULL,
    findings     jsonb NOT NULL DEFAULT '[]'::jsonb,
    deleted      jsonb NOT NULL DEFAULT '[]'::jsonb,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,   -- scope, fleet size and the caps applied
    UNIQUE (workflow_id, run_id)
);
CREATE INDEX reconcile_reports_started ON reconcile_reports (started_at DESC);
