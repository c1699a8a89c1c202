-- Bypass and recovery codes (docs/bypass-and-recovery.md).
--
-- A user's bypass: while `until` is in the future, the user's authentications complete
-- without a device, with type BYPASS. One row per user at most; granting again replaces it.
CREATE TABLE user_bypasses (
    application_id  TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    granted_at      BIGINT NOT NULL,
    until           BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    -- Who granted it: `api` (the customer's API key) or `admin` (the admin CLI).
    granted_by      TEXT NOT NULL,
    PRIMARY KEY (application_id, user_id)
);

-- A user's recovery codes: only a salted SHA-256 digest of each code is kept. A code is spent
-- by one conditional update of `used_at`; issuing new codes deletes the old ones.
CREATE TABLE recovery_codes (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    salt            TEXT NOT NULL,
    digest          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    used_at         BIGINT
);
CREATE INDEX recovery_codes_by_user ON recovery_codes (application_id, user_id);
