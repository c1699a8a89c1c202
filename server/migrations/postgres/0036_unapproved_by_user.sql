-- A new request's push-bombing counts (the user's pending requests, and their unapproved ones in
-- the window: `admission_verdict`, `store::authentications::ADMISSION_COUNTS`) walked
-- `authentications_by_user`: every request of the user since the window began, approved ones
-- included. A user approving often (a shared kiosk account, a service user, a busy phone) paid an
-- index entry, and on pages not yet all-visible a visit of its row, for every approval of the last
-- fifteen minutes, on every new request (0.3 ms of a 0.55 ms admission for a user with 2,000).
--
-- This index holds only the requests those counts can count: an approval's new row version
-- matches its condition no more, and the entry of the version it replaced is marked dead by the
-- first scan that meets it. A count walks what is pending, denied or expired in its window, which
-- the limits themselves keep small. `state = 'pending'` implies the index's condition, so
-- PostgreSQL uses it for both counts.
CREATE INDEX authentications_unapproved_by_user
    ON authentications (application_id, user_id, created_at) INCLUDE (state, expires_at)
    WHERE kind <> 'silent' AND state IN ('pending', 'expired', 'denied');

-- `authentications_by_user` carried the columns the counts read (0032); it now serves the user's
-- history and the user's deletion, which read the rows themselves.
DROP INDEX authentications_by_user;
CREATE INDEX authentications_by_user ON authentications (application_id, user_id, created_at);
