-- Two small tables written with every device call and every request are stored in their primary
-- key's own b-tree (`WITHOUT ROWID`) instead of a table plus a unique index on the key: each
-- insert, update or delete writes one b-tree fewer, so fewer pages go to the log at each commit
-- (docs/benchmarks.md, "Pages written per commit"). The rows and what the statements read are
-- unchanged. The pending-count triggers (0030) are recreated as they were, around the rebuild.

DROP TRIGGER authentications_pending_started;
DROP TRIGGER authentications_pending_ended;
DROP TRIGGER authentications_pending_removed;

CREATE TABLE pending_expiries_by_key (
    application_id TEXT    NOT NULL,
    expires_at     BIGINT  NOT NULL,
    shard          INTEGER NOT NULL,
    pending        INTEGER NOT NULL,
    PRIMARY KEY (application_id, expires_at, shard)
) WITHOUT ROWID;
INSERT INTO pending_expiries_by_key (application_id, expires_at, shard, pending)
SELECT application_id, expires_at, shard, pending FROM pending_expiries;
DROP TABLE pending_expiries;
ALTER TABLE pending_expiries_by_key RENAME TO pending_expiries;

CREATE TRIGGER authentications_pending_started AFTER INSERT ON authentications
WHEN NEW.state = 'pending'
BEGIN
    INSERT INTO pending_expiries (application_id, expires_at, shard, pending)
    VALUES (NEW.application_id, NEW.expires_at, unicode(substr(NEW.id, -1)) % 8, 1)
    ON CONFLICT (application_id, expires_at, shard) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER authentications_pending_ended AFTER UPDATE OF state ON authentications
WHEN OLD.state = 'pending' AND NEW.state <> 'pending'
BEGIN
    UPDATE pending_expiries SET pending = pending - 1
     WHERE application_id = OLD.application_id AND expires_at = OLD.expires_at
       AND shard = unicode(substr(OLD.id, -1)) % 8;
    DELETE FROM pending_expiries
     WHERE application_id = OLD.application_id AND expires_at = OLD.expires_at
       AND shard = unicode(substr(OLD.id, -1)) % 8 AND pending <= 0;
END;

CREATE TRIGGER authentications_pending_removed AFTER DELETE ON authentications
WHEN OLD.state = 'pending'
BEGIN
    UPDATE pending_expiries SET pending = pending - 1
     WHERE application_id = OLD.application_id AND expires_at = OLD.expires_at
       AND shard = unicode(substr(OLD.id, -1)) % 8;
    DELETE FROM pending_expiries
     WHERE application_id = OLD.application_id AND expires_at = OLD.expires_at
       AND shard = unicode(substr(OLD.id, -1)) % 8 AND pending <= 0;
END;

CREATE TABLE device_nonces_by_key (
    nonce_key   TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
) WITHOUT ROWID;
INSERT INTO device_nonces_by_key (nonce_key, expires_at)
SELECT nonce_key, expires_at FROM device_nonces;
DROP TABLE device_nonces;
ALTER TABLE device_nonces_by_key RENAME TO device_nonces;
CREATE INDEX device_nonces_by_expiry ON device_nonces (expires_at);
