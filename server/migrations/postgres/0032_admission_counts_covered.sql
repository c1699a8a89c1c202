-- A new request's admission counts (`store::authentications::ADMISSION_COUNTS`) walk the user's
-- requests of the push-bombing window: with the columns they read in the index, the walk can stay
-- in the index instead of reading every request's row from the table.
DROP INDEX authentications_by_user;
CREATE INDEX authentications_by_user
    ON authentications (application_id, user_id, created_at) INCLUDE (kind, state, expires_at);
