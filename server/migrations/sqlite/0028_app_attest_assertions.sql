-- App Attest assertions on answers (docs/attestation.md). The App Attest key an iOS
-- enrollment's pairing attested (uncompressed SEC1 point, base64url: a public key, not a secret)
-- and the highest assertion counter accepted so far (0 at pairing, the attestation's counter).
-- NULL: the pairing was not App Attested by a registered app. Kept on the enrollment, so that
-- unpairing or deleting the user removes it with the enrollment.
ALTER TABLE enrollments ADD COLUMN app_attest_public_key TEXT;
ALTER TABLE enrollments ADD COLUMN app_attest_counter BIGINT;
