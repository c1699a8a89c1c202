-- `qr_sessions_by_application` held every session of an application by state, but its only
-- reader counts the open ones (`store::qr_sessions::OPEN_FOR_APPLICATION`, every new QR
-- session, under the application's quota lock). PostgreSQL's planner, given `state IN (…)`
-- on the index's second column, kept the states as a filter and walked every unexpired session
-- of the application, finished ones included: at a hundred logins a second, thousands of rows
-- per new session. The index now holds only open sessions, by their expiry: a session leaves it
-- when it is approved, denied, consumed or canceled (expired ones stay until retention deletes
-- them; the count skips them by their expiry, the index's second column).
DROP INDEX qr_sessions_by_application;
CREATE INDEX qr_sessions_open ON qr_sessions (application_id, expires_at)
    WHERE state IN ('created', 'scanned', 'verifying');
