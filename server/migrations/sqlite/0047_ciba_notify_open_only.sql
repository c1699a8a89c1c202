-- `ciba_requests_notify` held every CIBA request by its notification state, but only two of
-- the states are ever read through it: 'waiting' (`store::ciba::PROMOTE_FINISHED` makes those
-- whose request finished due) and 'due' (`store::ciba::DUE_NOTIFICATIONS`, by when they are
-- due). Poll-mode requests ('none', written by every backchannel request of a poll client) and
-- finished deliveries ('done', 'failed') are never looked up by state. The index now holds the
-- waiting and due requests only, with the same columns: a poll-mode request writes no entry,
-- and a delivery leaves the index when it ends. A request made due moves within the one index.
--
-- The predicate is written as an OR of equalities, not `IN (…)`: SQLite uses a partial index
-- only when it can see that the query's WHERE implies the index's, and it sees that
-- `notify_state = 'due'` implies `notify_state = 'waiting' OR notify_state = 'due'`, not an
-- `IN` list. Every statement reading through the index names its state as a literal
-- (`store::query_plans` checks their plans on both engines).
DROP INDEX ciba_requests_notify;
CREATE INDEX ciba_requests_notify ON ciba_requests (notify_state, notify_due_at_ms)
    WHERE notify_state = 'waiting' OR notify_state = 'due';
