-- Events and history: per-application signed webhooks with their outbox, the append-only audit
-- log, and the marker that lets the expiry of an authentication be announced once.

CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL REFERENCES applications(id),
    url             TEXT NOT NULL,
    -- The signing secret, sealed with the data key (see docs/secrets-and-retention.md).
    secret          TEXT NOT NULL,
    -- Comma-separated event types this endpoint receives; empty: every type.
    event_types     TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_application ON webhook_endpoints (application_id, created_at);

-- The outbox: one row per event and endpoint, claimed by one instance at a time with a lease.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    application_id   TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    last_attempt_at  BIGINT,
    delivered_at     BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at);

-- The audit log: appended to, never changed (the trigger refuses updates and deletes).
CREATE TABLE audit_log (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    at_ms           BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    actor           TEXT NOT NULL,
    application_id  TEXT,
    user_id         TEXT,
    device_id       TEXT,
    subject         TEXT,
    client_ip       TEXT,
    accessing_ip    TEXT,
    location        TEXT,
    outcome         TEXT NOT NULL,
    details         TEXT NOT NULL
);
CREATE INDEX audit_log_by_application ON audit_log (application_id, seq);
CREATE INDEX audit_log_by_user ON audit_log (application_id, user_id, seq);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- An expired authentication is announced once (expiry itself writes nothing).
ALTER TABLE authentications ADD COLUMN expiry_reported BIGINT NOT NULL DEFAULT 0;
UPDATE authentications SET expiry_reported = 1 WHERE expires_at <= CAST(EXTRACT(EPOCH FROM now()) AS BIGINT);
CREATE INDEX authentications_unreported_expiry ON authentications (expires_at)
    WHERE state = 'pending' AND expiry_reported = 0;
