-- One-time passcodes beyond the app: per-application OTP fallback and "use code", backup
-- channels (SMS, voice, email), mandatory authentication methods and the SMS/voice provider
-- webhook; users' backup contacts; the passcode options of each authentication; backup and
-- one-time-device passcode challenges (codes stored salted and hashed, expiring, single use,
-- with an attempt count); and OATH tokens registered with a known seed.
ALTER TABLE applications ADD COLUMN use_code BIGINT NOT NULL DEFAULT 0;
ALTER TABLE applications ADD COLUMN otp_fallback BIGINT NOT NULL DEFAULT 0;
ALTER TABLE applications ADD COLUMN otp_fallback_after BIGINT NOT NULL DEFAULT 30;
ALTER TABLE applications ADD COLUMN backup_channels TEXT NOT NULL DEFAULT '';
ALTER TABLE applications ADD COLUMN mandatory_methods TEXT NOT NULL DEFAULT '';
ALTER TABLE applications ADD COLUMN sms_webhook_url TEXT;
ALTER TABLE users ADD COLUMN phone TEXT;
ALTER TABLE users ADD COLUMN email TEXT;
-- otp_mode: 'none', 'use_code' or 'fallback'; otp_after: from when a passcode is accepted.
ALTER TABLE authentications ADD COLUMN otp_mode TEXT NOT NULL DEFAULT 'none';
ALTER TABLE authentications ADD COLUMN otp_after BIGINT;
ALTER TABLE authentications ADD COLUMN backup_channels TEXT NOT NULL DEFAULT '';
CREATE TABLE otp_challenges (
    id                  TEXT PRIMARY KEY,
    application_id      TEXT NOT NULL REFERENCES applications(id),
    user_id             TEXT NOT NULL,
    authentication_id   TEXT,
    channel             TEXT NOT NULL,
    destination_hint    TEXT NOT NULL,
    one_time_device     BIGINT NOT NULL,
    code_salt           TEXT NOT NULL,
    code_digest         TEXT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    used_at             BIGINT
);
CREATE INDEX otp_challenges_user ON otp_challenges (application_id, user_id, channel, created_at);
CREATE INDEX otp_challenges_authentication ON otp_challenges (authentication_id);
CREATE TABLE otp_tokens (
    token_id            TEXT PRIMARY KEY,
    application_id      TEXT NOT NULL REFERENCES applications(id),
    user_id             TEXT NOT NULL,
    kind                TEXT NOT NULL,
    seed                TEXT NOT NULL,
    algorithm           TEXT NOT NULL,
    digits              BIGINT NOT NULL,
    period              BIGINT,
    counter             BIGINT,
    last_step           BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL
);
CREATE INDEX otp_tokens_user ON otp_tokens (application_id, user_id);
