-- SQLite stores `pending_expiries` and `device_nonces` in their primary key's b-tree from this
-- migration on (see the SQLite migration of the same number). PostgreSQL keeps every table in a
-- heap beside its indexes and has nothing to change; this keeps the two engines' migrations
-- numbered alike.
SELECT 1;
