-- Cloud push providers: an application may store FCM HTTP v1 credentials (a Google service
-- account) and APNs token-auth credentials (team id, key id, .p8 key, topic, environment), each
-- as JSON text. When FCM or APNs says a device's token is no longer valid, the enrollment is
-- marked stale and is not pushed to until the device registers a fresh token.
ALTER TABLE applications ADD COLUMN push_fcm TEXT;
ALTER TABLE applications ADD COLUMN push_apns TEXT;
ALTER TABLE enrollments ADD COLUMN push_stale_at BIGINT;
