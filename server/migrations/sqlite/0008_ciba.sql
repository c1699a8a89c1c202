-- OpenID Provider signing keys for ID tokens. The newest unretired key signs; retired keys stay
-- published in the JWKS until `retired_at` + the longest token lifetime has passed.
CREATE TABLE oidc_signing_keys (
    kid          TEXT PRIMARY KEY,
    private_key  BLOB NOT NULL,
    public_jwk   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT
);

-- CIBA clients (relying parties), each belonging to an application whose users it may ask.
-- Client secrets are stored as SHA-256 digests only.
CREATE TABLE ciba_clients (
    client_id              TEXT PRIMARY KEY,
    application_id         TEXT NOT NULL REFERENCES applications(id),
    name                   TEXT NOT NULL,
    delivery_mode          TEXT NOT NULL,
    notification_endpoint  TEXT,
    auth_method            TEXT NOT NULL,
    secret_digest          TEXT,
    jwks                   TEXT,
    request_signing_alg    TEXT,
    user_code_required     BIGINT NOT NULL,
    created_at             BIGINT NOT NULL
);
CREATE INDEX ciba_clients_application ON ciba_clients (application_id);

-- CIBA authentication requests. Each drives one device authentication; tokens are issued once.
-- notify_state: 'none' (poll mode), 'waiting' (not finished), 'due' (deliver at notify_due_at_ms),
-- 'done' (delivered), 'failed' (every attempt failed).
CREATE TABLE ciba_requests (
    auth_req_id                TEXT PRIMARY KEY,
    client_id                  TEXT NOT NULL REFERENCES ciba_clients(client_id) ON DELETE CASCADE,
    authentication_id          TEXT NOT NULL UNIQUE,
    application_id             TEXT NOT NULL,
    user_id                    TEXT NOT NULL,
    scope                      TEXT NOT NULL,
    acr                        TEXT NOT NULL,
    client_notification_token  TEXT,
    poll_interval              BIGINT NOT NULL,
    last_polled_at_ms          BIGINT,
    created_at                 BIGINT NOT NULL,
    expires_at                 BIGINT NOT NULL,
    tokens_issued_at           BIGINT,
    notify_state               TEXT NOT NULL,
    notify_attempts            BIGINT NOT NULL,
    notify_due_at_ms              BIGINT
);
CREATE INDEX ciba_requests_notify ON ciba_requests (notify_state, notify_due_at_ms);

-- Access and refresh tokens, stored as SHA-256 digests only.
CREATE TABLE oidc_tokens (
    token_digest  TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    client_id     TEXT NOT NULL REFERENCES ciba_clients(client_id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    scope         TEXT NOT NULL,
    acr           TEXT NOT NULL,
    amr           TEXT NOT NULL,
    auth_time     BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);

-- CIBA user codes (a secret the user gives the relying party), salted SHA-256 digests.
CREATE TABLE ciba_user_codes (
    application_id  TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    salt            TEXT NOT NULL,
    code_digest     TEXT NOT NULL,
    failures        BIGINT NOT NULL,
    PRIMARY KEY (application_id, user_id)
);
