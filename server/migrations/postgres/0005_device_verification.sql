-- Additional devices: an application either pairs each device individually or has new devices
-- verified by the user's primary device. A device waiting for that approval has an enrollment
-- in state 'pending_verification' naming the authentication sent to the primary device; it
-- becomes 'active' when that is approved and 'rejected' when it is denied or expires.
ALTER TABLE applications ADD COLUMN additional_devices TEXT NOT NULL DEFAULT 'individual';
ALTER TABLE enrollments ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE enrollments ADD COLUMN verification_id TEXT;
CREATE INDEX enrollments_by_verification ON enrollments (verification_id);

-- An authentication that cannot complete (its device was unpaired) is 'failed' with a reason.
ALTER TABLE authentications ADD COLUMN failure_reason TEXT;
