-- `authentications_pending` held every request of a device, by state: a request's answer wrote
-- the row's new version into it again (on PostgreSQL a new entry, since the changed state is
-- indexed; on SQLite its entry moved). Its only readers ask for a device's pending requests
-- (`store::authentications::PENDING_FOR`, every device pull; the unpairing that fails them), so it
-- now holds only those: an answered request leaves it, and the index stays the size of what is
-- pending (expired requests nobody answered stay until retention deletes them; the pull skips them
-- by their expiry, the index's second column).
DROP INDEX authentications_pending;
CREATE INDEX authentications_pending ON authentications (enrollment_id, expires_at)
    WHERE state = 'pending';
