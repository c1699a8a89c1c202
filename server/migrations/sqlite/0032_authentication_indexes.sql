-- A new request's admission counts (`store::authentications::ADMISSION_COUNTS`) walk the user's
-- requests of the push-bombing window: with the columns they read in the index, the walk stays in
-- the index (`USING COVERING INDEX`) instead of reading every request's row from the table, so a
-- user with many recent requests costs index pages, not one table page per request.
DROP INDEX authentications_by_user;
CREATE INDEX authentications_by_user
    ON authentications (application_id, user_id, created_at, kind, state, expires_at);

-- The application's pending requests are summed over `pending_expiries` (0030), not counted over
-- this index any more, and no other statement filters requests by application and state: one
-- index fewer to write with every request and every answer.
DROP INDEX authentications_by_application;
