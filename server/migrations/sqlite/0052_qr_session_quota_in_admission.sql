-- Nothing on SQLite: a new QR session's quota, count and insert run in one write transaction on
-- the one writer connection (`store::qr_sessions::insert_within_quota`). The PostgreSQL
-- migration of this number has its admission function read the application's quota itself.
SELECT 1;
