-- Platform attestation (docs/attestation.md). An application's attestation settings (mode
-- off/report/require, the Android packages with their signing certificate digests, the Apple
-- team and bundle ids) as JSON; NULL: off.
ALTER TABLE applications ADD COLUMN attestation_settings TEXT;
-- What a pairing's attestation proved (platform, security level, user-verification binding, app,
-- boot state) as JSON; NULL: nothing verified.
ALTER TABLE enrollments ADD COLUMN attestation TEXT;
