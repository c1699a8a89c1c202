-- Number matching that cannot be guessed, and per-application push-bombing limits.
-- authentications.number_matching: 'choice' or 'typed' (NULL: 'choice' when number_to_show is
-- set, else 'off', as before this migration). authentications.denial_reason: why a denied
-- authentication was denied ('declined', 'reported_fraud', 'wrong_number').
ALTER TABLE authentications ADD COLUMN number_matching TEXT;
ALTER TABLE authentications ADD COLUMN denial_reason TEXT;
-- The application's number matching mode for requests that do not choose one, and its
-- push-bombing limits (NULL: the server-wide value).
ALTER TABLE applications ADD COLUMN number_matching TEXT NOT NULL DEFAULT 'off';
ALTER TABLE applications ADD COLUMN max_pending_per_user BIGINT;
ALTER TABLE applications ADD COLUMN max_unapproved_per_user BIGINT;
ALTER TABLE applications ADD COLUMN push_bombing_window_seconds BIGINT;
