-- Authentications: a signed question to one device, and its signed answer. The state changes
-- from 'pending' exactly once, by a conditional update (approve, deny and expiry race safely).
CREATE TABLE authentications (
    id                  TEXT PRIMARY KEY,
    application_id      TEXT NOT NULL REFERENCES applications(id),
    user_id             TEXT NOT NULL,
    enrollment_id       TEXT NOT NULL,
    kind                TEXT NOT NULL,
    signed_request      TEXT NOT NULL,
    parameters_digest   TEXT NOT NULL,
    nonce               TEXT NOT NULL,
    number_to_show      BIGINT,
    require_user_verification BIGINT NOT NULL,
    accessing_ip        TEXT,
    state               TEXT NOT NULL,
    decision            TEXT,
    signed_response     TEXT,
    attributes          TEXT,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    answered_at         BIGINT
);
CREATE INDEX authentications_pending ON authentications (enrollment_id, state, expires_at);
