-- A new QR session's quota read where its admission takes the lock (`store::qr_sessions::
-- insert_within_quota`).
--
-- Before, the server read the application's quota in a statement of its own and passed it to
-- `qr_session_admitted` (migration `0051`): one round trip more on every new session. The
-- function now reads the application's own quota (`max_open_qr_sessions`) from the row it
-- locks, and takes its third argument as the server's default, in force when the application
-- sets none. Reading it under the lock also means a quota changed meanwhile is the one applied.
-- The argument keeps its name (`quota`): PostgreSQL does not rename a function's arguments in
-- place, and the insert that calls it does not change.
CREATE OR REPLACE FUNCTION qr_session_admitted(p_application_id text, p_now bigint, quota bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    own bigint;
BEGIN
    SELECT max_open_qr_sessions INTO own FROM applications WHERE id = p_application_id
       FOR NO KEY UPDATE;
    RETURN (SELECT COUNT(*) FROM qr_sessions WHERE application_id = p_application_id
            AND state IN ('created', 'scanned', 'verifying') AND expires_at > p_now)
           < COALESCE(own, quota);
END
$$;
