-- FIDO2 / WebAuthn (docs/fido.md). An application's relying-party settings as JSON.
CREATE TABLE fido_settings (
    application_id  TEXT PRIMARY KEY REFERENCES applications(id),
    settings        TEXT NOT NULL
);

-- Users' FIDO credentials: the credential as the WebAuthn library serialises it (public key,
-- counter, flags), its type (SECURITY_KEY | PLATFORM | FIDO2_BIOMETRICS), the authenticator model
-- when attested, the last signature counter (only ever raised, by a conditional update), and
-- when a counter regression flagged it as cloned.
CREATE TABLE fido_credentials (
    id               TEXT PRIMARY KEY,
    application_id   TEXT NOT NULL REFERENCES applications(id),
    user_id          TEXT NOT NULL,
    credential_id    TEXT NOT NULL,
    credential       TEXT NOT NULL,
    kind             TEXT NOT NULL,
    aaguid           TEXT,
    counter          BIGINT NOT NULL,
    backup_eligible  BIGINT NOT NULL,
    backup_state     BIGINT NOT NULL,
    discoverable     BIGINT NOT NULL,
    nickname         TEXT NOT NULL,
    compromised_at   BIGINT,
    created_at       BIGINT NOT NULL,
    last_used_at     BIGINT,
    UNIQUE (application_id, credential_id)
);
CREATE INDEX fido_credentials_by_user ON fido_credentials (application_id, user_id);

-- WebAuthn ceremonies under way: the library's state (challenge, allowed credentials, policy),
-- bound to a flow and its user, short-lived, and taken (deleted) once by the response that
-- answers it, so a replayed response finds nothing.
CREATE TABLE fido_ceremonies (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL REFERENCES applications(id),
    user_id         TEXT NOT NULL,
    flow_id         TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    state           TEXT NOT NULL,
    expires_at      BIGINT NOT NULL
);
CREATE INDEX fido_ceremonies_by_expiry ON fido_ceremonies (expires_at);
