-- QR login sessions. The page shows a code carrying a one-time token (looked up by its SHA-256
-- digest; the token text is kept only while the code can still be scanned, to draw it, and is
-- cleared when a device claims the session). The browser reads progress with a second secret,
-- also stored as a digest. `version` changes whenever anything the page shows changes.
CREATE TABLE qr_sessions (
    id                    TEXT PRIMARY KEY,
    application_id        TEXT NOT NULL REFERENCES applications(id),
    restricted_user_id    TEXT,
    token                 TEXT,
    token_digest          TEXT NOT NULL UNIQUE,
    code_expires_at       BIGINT NOT NULL,
    browser_token_digest  TEXT NOT NULL UNIQUE,
    context               TEXT NOT NULL,
    redirect_url          TEXT,
    state                 TEXT NOT NULL,
    version               BIGINT NOT NULL,
    device_id             TEXT,
    candidates            TEXT,
    nonce                 TEXT,
    signed_context        TEXT,
    enrollment_id         TEXT,
    user_id               TEXT,
    decision              TEXT,
    signed_response       TEXT,
    attributes            TEXT,
    follow_up_id          TEXT,
    created_at            BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    answered_at           BIGINT
);
CREATE INDEX qr_sessions_by_follow_up ON qr_sessions (follow_up_id);

-- What an application asks after a QR approval: nothing more, a silent verification of the
-- device ('extra_verification'), or a push approval to the user ('user_approval').
ALTER TABLE applications ADD COLUMN qr_policy TEXT NOT NULL DEFAULT 'none';
