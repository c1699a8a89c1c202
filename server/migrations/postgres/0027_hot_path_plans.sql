-- Device-call nonces are forgotten once they can no longer be fresh ("DELETE FROM device_nonces
-- WHERE expires_at < $1", a few percent of device calls): without this index that housekeeping
-- read the whole table. Found by the hot-path query plan check (server/src/store/query_plans.rs).
CREATE INDEX device_nonces_by_expiry ON device_nonces (expires_at);
