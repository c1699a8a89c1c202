-- Nothing on SQLite: a new QR session's count and insert already run in one write transaction
-- on the one writer connection (`store::qr_sessions::insert_within_quota`). The PostgreSQL
-- migration of this number adds the function that admits a session in one statement there.
SELECT 1;
