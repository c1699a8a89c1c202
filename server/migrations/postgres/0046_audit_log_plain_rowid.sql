-- SQLite only: its 0046 rebuilds `audit_log` without AUTOINCREMENT, whose `sqlite_sequence`
-- row every append wrote. PostgreSQL's `audit_log.seq` is a `BIGSERIAL`: its sequence is not
-- WAL-logged on every `nextval` (one record per 32 values) and adds no page per append to
-- the commit, so it is kept. This file keeps both engines' migrations numbered alike.
SELECT 1;
