-- An application's pending requests, counted as they start and end, by when they expire: the
-- per-application quota (`max_pending_requests`) sums the rows that have not expired instead of
-- counting every pending request under the application's lock (docs/architecture.md, "The
-- pending quota"). Kept by the triggers below, so every way a request starts or ends (answer,
-- passcode, cancellation, device unpaired, user deleted, retention) keeps it true; expiry writes
-- nothing, and an expired row is simply no longer summed. `shard` (from the request id's last
-- character) spreads the requests of one second over 8 rows, so requests answered at once do
-- not wait on one row. A row goes when its last request ends.
CREATE TABLE pending_expiries (
    application_id TEXT    NOT NULL,
    expires_at     BIGINT  NOT NULL,
    shard          INTEGER NOT NULL,
    pending        INTEGER NOT NULL,
    PRIMARY KEY (application_id, expires_at, shard)
);

INSERT INTO pending_expiries (application_id, expires_at, shard, pending)
SELECT application_id, expires_at, unicode(substr(id, -1)) % 8, COUNT(*)
  FROM authentications WHERE state = 'pending'
 GROUP BY application_id, expires_at, unicode(substr(id, -1)) % 8;

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
