-- The pairing path's housekeeping deleted from two tables by a column no index served, so
-- each run read the table whole on the one writer: expired pairing codes (kept a day after
-- their expiry, run for one new code in 64) and the pairing throttle's old windows (one row per
-- address and minute, kept an hour, run for one attempt in 32: an attack from many addresses
-- grows the table, and every 32nd attempt then read all of it). `store::query_plans` checks
-- both statements.
CREATE INDEX pairing_codes_by_expiry ON pairing_codes (expires_at);
CREATE INDEX pairing_failures_by_window ON pairing_failures (window_start);
