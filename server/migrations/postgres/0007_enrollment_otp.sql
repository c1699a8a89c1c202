-- Offline one-time passcodes: each enrollment whose device sent a transport key gets a TOTP
-- seed at pairing (sealed to the device in the pairing reply). The last accepted time step
-- makes every code single use; consecutive failures per user lock OTP checks until the
-- customer resets them.
ALTER TABLE enrollments ADD COLUMN otp_seed TEXT;
ALTER TABLE enrollments ADD COLUMN otp_last_step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN otp_failures BIGINT NOT NULL DEFAULT 0;
