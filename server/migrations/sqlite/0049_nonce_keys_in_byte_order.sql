-- PostgreSQL only: its 0049 compares `device_nonces.nonce_key` in the `C` collation, so that a
-- range of keys (`store::nonces::FORGET_ENROLLMENT`) is a range of its primary key. SQLite
-- already compares text byte by byte (`BINARY`). This file keeps both engines' migrations
-- numbered alike.
SELECT 1;
