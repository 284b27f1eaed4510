-- safeops' own audit trail, created idempotently in every target database.
CREATE SCHEMA IF NOT EXISTS safeops;
CREATE TABLE IF NOT EXISTS safeops.safeops_audit (
    id            bigserial PRIMARY KEY,
    flow_run_id   uuid NULL,
    flow_name     text NOT NULL,
    target        text NOT NULL,
    plan_hash     text NOT NULL,
    approver      text NOT NULL,
    reason        text NOT NULL,
    approved_via  text NOT NULL,
    counts        jsonb NOT NULL,
    snapshot_uri  text NULL,
    started_at    timestamptz NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    identity      text NOT NULL DEFAULT 'unverified',
    signatures    jsonb NOT NULL DEFAULT '[]'
);
-- Tables created before signed approvals: add the columns (idempotent). ``identity`` is
-- 'verified' when every approval was an SSH signature checked against allowed signers;
-- ``signatures`` holds [{principal, fingerprint, statement, signature}] to re-verify later.
ALTER TABLE safeops.safeops_audit
    ADD COLUMN IF NOT EXISTS identity   text  NOT NULL DEFAULT 'unverified',
    ADD COLUMN IF NOT EXISTS signatures jsonb NOT NULL DEFAULT '[]';
CREATE INDEX IF NOT EXISTS safeops_audit_flow_run_idx ON safeops.safeops_audit (flow_run_id);
CREATE INDEX IF NOT EXISTS safeops_audit_snapshot_idx ON safeops.safeops_audit (snapshot_uri);

-- The snapshot register: every snapshot safeops wrote from this database, by the sha256
-- of its summary (which records the body's sha256, and no reader accepts a body that
-- does not hash to it, so the summary's digest names the whole file). A restore trusts
-- only a file whose summary digest is registered here (or an explicit --untraced).
CREATE TABLE IF NOT EXISTS safeops.safeops_snapshots (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL,
    uri             text NOT NULL,
    summary_sha256  text NOT NULL,
    body_sha256     text NOT NULL,
    totals          jsonb NOT NULL,
    flow_run_id     uuid NULL,
    created_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS safeops_snapshots_summary_idx
    ON safeops.safeops_snapshots (summary_sha256);
