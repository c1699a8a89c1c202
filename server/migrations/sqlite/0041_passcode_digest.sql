-- The passcode that approved an authentication, as a SHA-256 digest over the authentication's
-- id and the code (the code itself is spent by then: its time step, counter or challenge is
-- used up). A copy of that passcode, sent at once or retried, is answered with the approval
-- instead of being refused as spent and counted as a wrong guess.
ALTER TABLE authentications ADD COLUMN passcode_digest TEXT;
