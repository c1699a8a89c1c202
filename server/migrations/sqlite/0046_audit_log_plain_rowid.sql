-- `audit_log.seq` was `INTEGER PRIMARY KEY AUTOINCREMENT`: every append also wrote the table's
-- row of `sqlite_sequence`, one more b-tree page logged by every commit that appends a record
-- (every request, answer and CIBA backchannel request; docs/benchmarks.md). The table is rebuilt
-- with `seq INTEGER PRIMARY KEY`, which numbers a new record max(seq) + 1.
--
-- This assigns the same numbers AUTOINCREMENT did, because the log is append-only: the
-- triggers refuse every UPDATE and DELETE, so the highest seq ever given is always on the
-- table, and AUTOINCREMENT's max(sqlite_sequence, max(seq)) + 1 is max(seq) + 1. A rolled-back
-- append frees its number in both cases (its `sqlite_sequence` update rolls back with it), and
-- no reader ever saw it. So seq still only grows and is never reused, which is what the
-- cursors of `store::audit::query` (`before_seq`, `after_seq`) and the export rely on; nothing
-- reads `sqlite_sequence`.
--
-- Every record is copied with its seq; the indexes and both triggers are recreated as 0020
-- made them. On a large log the copy takes a while (the migration holds the write lock).

CREATE TABLE audit_log_rebuilt (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    at_ms           BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    actor           TEXT NOT NULL,
    application_id  TEXT,
    user_id         TEXT,
    device_id       TEXT,
    subject         TEXT,
    client_ip       TEXT,
    accessing_ip    TEXT,
    location        TEXT,
    outcome         TEXT NOT NULL,
    details         TEXT NOT NULL
);
INSERT INTO audit_log_rebuilt (seq, id, at_ms, kind, actor, application_id, user_id, device_id,
    subject, client_ip, accessing_ip, location, outcome, details)
SELECT seq, id, at_ms, kind, actor, application_id, user_id, device_id,
    subject, client_ip, accessing_ip, location, outcome, details
FROM audit_log ORDER BY seq;
-- Drops the old table's indexes and triggers with it (and its `sqlite_sequence` row).
DROP TABLE audit_log;
ALTER TABLE audit_log_rebuilt RENAME TO audit_log;

CREATE INDEX audit_log_by_application ON audit_log (application_id, seq);
CREATE INDEX audit_log_by_user ON audit_log (application_id, user_id, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
