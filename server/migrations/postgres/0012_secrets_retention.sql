-- Secrets at rest: every secret column (TOTP/OATH seeds, the server's and the ID-token signing
-- keys, FCM/APNs credentials, CIBA notification tokens, QR code tokens) is sealed with the
-- database's data key (AES-256-GCM, the table, column and row id as associated data). The data
-- key is stored here wrapped by the key-encryption key (the master key) named by `kek_id`, or
-- unwrapped when `kek_id` is 'none' (a server started without a master key). One row, id 'data'.
CREATE TABLE data_keys (
    id            TEXT PRIMARY KEY,
    kek_id        TEXT NOT NULL,
    wrapped_key   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    rewrapped_at  BIGINT
);

-- Per-application quotas (NULL: the server's default): QR sessions open at once, and
-- authentication requests pending at once.
ALTER TABLE applications ADD COLUMN max_open_qr_sessions BIGINT;
ALTER TABLE applications ADD COLUMN max_pending_requests BIGINT;

-- Quotas count an application's open QR sessions and pending requests; retention finds old
-- rows by their expiry.
CREATE INDEX qr_sessions_by_application ON qr_sessions (application_id, state, expires_at);
CREATE INDEX qr_sessions_by_expiry ON qr_sessions (expires_at);
CREATE INDEX authentications_by_application ON authentications (application_id, state, expires_at);
CREATE INDEX authentications_by_expiry ON authentications (expires_at);
CREATE INDEX otp_challenges_by_expiry ON otp_challenges (expires_at);
CREATE INDEX ciba_requests_by_expiry ON ciba_requests (expires_at);
CREATE INDEX oidc_tokens_by_expiry ON oidc_tokens (expires_at);
