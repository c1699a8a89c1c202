-- A new request's push-bombing counts (the user's pending requests, and their unapproved ones in
-- the window: `store::authentications::admitted_insert_statement` and `ADMISSION_COUNTS`) walked
-- `authentications_by_user`: every request of the user since the window began, approved ones
-- included. A user approving often (a shared kiosk account, a service user, a busy phone) paid an
-- index entry for every approval of the last fifteen minutes, on every new request.
--
-- This index holds only the requests those counts can count (an approval leaves it when it is
-- recorded), with every column they read (`USING COVERING INDEX`). A count walks what is
-- pending, denied or expired in its window, which the limits themselves keep small. SQLite uses a
-- partial index only when the query repeats its condition term by term: the counts say
-- `kind <> 'silent' AND state IN ('pending', 'expired', 'denied')` (the pending count adds
-- `state = 'pending'`).
CREATE INDEX authentications_unapproved_by_user
    ON authentications (application_id, user_id, created_at, kind, state, expires_at)
    WHERE kind <> 'silent' AND state IN ('pending', 'expired', 'denied');

-- `authentications_by_user` carried the columns the counts read (0032); it now serves the user's
-- history and the user's deletion, which read the rows themselves. Without the state in it, an
-- answer no longer rewrites its entry.
DROP INDEX authentications_by_user;
CREATE INDEX authentications_by_user ON authentications (application_id, user_id, created_at);
