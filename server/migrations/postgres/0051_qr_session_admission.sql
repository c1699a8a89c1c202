-- A new QR session's admission in one statement (`store::qr_sessions::insert_within_quota`).
--
-- Before, a new session was five round trips: `BEGIN`, the application's row lock, the count of
-- its open sessions, the insert, `COMMIT`; and the lock, which serialises the application's new
-- sessions, was held across all of them. The count must be read after the lock is granted, so
-- that it sees the session the previous holder committed; inside one statement it could not be,
-- because a statement reads from the snapshot taken when it began, before it waited for the
-- lock. A VOLATILE function takes a fresh snapshot for each query it runs: this one takes the
-- lock, then counts, and the insert that calls it (one statement, committed on its own) keeps
-- the lock until it commits. The count is `store::qr_sessions::OPEN_FOR_APPLICATION`'s (a test
-- compares them).
CREATE FUNCTION qr_session_admitted(p_application_id text, p_now bigint, quota bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM applications WHERE id = p_application_id FOR NO KEY UPDATE;
    RETURN (SELECT COUNT(*) FROM qr_sessions WHERE application_id = p_application_id
            AND state IN ('created', 'scanned', 'verifying') AND expires_at > p_now) < quota;
END
$$;
