-- An operator's deletion of one orphan a reconcile report names: requested (and counted towards
-- the reconcile cap) while 'deleting', then its outcome. At most one per resource is under way.
CREATE TABLE IF NOT EXISTS orphan_deletions (
    id           bigserial PRIMARY KEY,
    report_id    bigint NOT NULL REFERENCES reconcile_reports (id),
    kind         text NOT NULL,
    cloud_id     text NOT NULL,
    org_id       text,
    org_slug     text,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    workflow_id  text NOT NULL,
    status       text NOT NULL DEFAULT 'deleting'
                 CHECK (status IN ('deleting', 'deleted', 'already_gone', 'refused', 'failed')),
    code         text,
    reason       text,
    finished_at  timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS orphan_deletions_under_way ON orphan_deletions (cloud_id) WHERE status = 'deleting';
CREATE INDEX IF NOT EXISTS orphan_deletions_cloud_id ON orphan_deletions (cloud_id, id);
CREATE INDEX IF NOT EXISTS orphan_deletions_requested_at ON orphan_deletions (requested_at);
CREATE INDEX IF NOT EXISTS reconcile_reports_finished ON reconcile_reports (finished_at);
