-- Applications (customers' apps). API keys are stored as SHA-256 digests only.
CREATE TABLE applications (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    api_key_digest  TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL
);

-- Users, named by the customer, scoped to an application.
CREATE TABLE users (
    application_id  TEXT NOT NULL REFERENCES applications(id),
    user_id         TEXT NOT NULL,
    display_name    TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (application_id, user_id)
);

-- Pairing codes, stored as SHA-256 digests. Consumed atomically, once.
CREATE TABLE pairing_codes (
    code_digest          TEXT PRIMARY KEY,
    application_id       TEXT NOT NULL REFERENCES applications(id),
    user_id              TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    expires_at           BIGINT NOT NULL,
    consumed_at          BIGINT,
    registration_digest  TEXT
);

-- Enrollments: one device paired with one user. The signed reply is kept so that a device
-- resending the identical registration gets the identical answer.
CREATE TABLE enrollments (
    enrollment_id          TEXT PRIMARY KEY,
    application_id         TEXT NOT NULL REFERENCES applications(id),
    user_id                TEXT NOT NULL,
    device_id              TEXT NOT NULL,
    possession_key         TEXT NOT NULL,
    user_verification_key  TEXT NOT NULL,
    device_info            TEXT NOT NULL,
    signals                TEXT NOT NULL,
    push                   TEXT NOT NULL,
    push_provider          TEXT NOT NULL,
    is_primary             BIGINT NOT NULL,
    registration_digest    TEXT NOT NULL UNIQUE,
    server_payload         TEXT NOT NULL,
    paired_at              BIGINT NOT NULL,
    last_seen_at           BIGINT NOT NULL
);
CREATE INDEX enrollments_by_user ON enrollments (application_id, user_id);

-- The server's ES256 signing keys (PKCS#8). The oldest is the one that signs.
CREATE TABLE server_keys (
    kid          TEXT PRIMARY KEY,
    private_key  BYTEA NOT NULL,
    public_jwk   TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- Nonces of device-signed calls, kept until they could no longer be fresh.
CREATE TABLE device_nonces (
    nonce_key   TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

-- Failed pairing-code attempts per client address and minute (the guessing throttle).
CREATE TABLE pairing_failures (
    client        TEXT NOT NULL,
    window_start  BIGINT NOT NULL,
    failures      BIGINT NOT NULL,
    PRIMARY KEY (client, window_start)
);
