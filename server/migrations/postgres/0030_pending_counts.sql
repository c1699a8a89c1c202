-- An application's pending requests, counted as they start and end, by when they expire: the
-- per-application quota (`max_pending_requests`) sums the rows that have not expired instead of
-- counting every pending request under the application's lock (docs/architecture.md, "The
-- pending quota"). Kept by the trigger below, so every way a request starts or ends (answer,
-- passcode, cancellation, device unpaired, user deleted, retention) keeps it true; expiry writes
-- nothing, and an expired row is simply no longer summed. `shard` (from the request id's last
-- character) spreads the requests of one second over 8 rows, so requests answered at once do
-- not wait on one row's lock. A row goes when its last request ends.
CREATE TABLE pending_expiries (
    application_id TEXT    NOT NULL,
    expires_at     BIGINT  NOT NULL,
    shard          INTEGER NOT NULL,
    pending        INTEGER NOT NULL,
    PRIMARY KEY (application_id, expires_at, shard)
);

INSERT INTO pending_expiries (application_id, expires_at, shard, pending)
SELECT application_id, expires_at, ascii(right(id, 1)) % 8, COUNT(*)
  FROM authentications WHERE state = 'pending'
 GROUP BY application_id, expires_at, ascii(right(id, 1)) % 8;

CREATE FUNCTION authentications_track_pending() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.state = 'pending'
       AND (TG_OP = 'DELETE' OR NEW.state <> 'pending') THEN
        UPDATE pending_expiries SET pending = pending - 1
         WHERE application_id = OLD.application_id AND expires_at = OLD.expires_at
           AND shard = ascii(right(OLD.id, 1)) % 8;
        DELETE FROM pending_expiries
         WHERE application_id = OLD.application_id AND expires_at = OLD.expires_at
           AND shard = ascii(right(OLD.id, 1)) % 8 AND pending <= 0;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.state = 'pending' THEN
        INSERT INTO pending_expiries (application_id, expires_at, shard, pending)
        VALUES (NEW.application_id, NEW.expires_at, ascii(right(NEW.id, 1)) % 8, 1)
        ON CONFLICT (application_id, expires_at, shard)
        DO UPDATE SET pending = pending_expiries.pending + 1;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER authentications_pending
AFTER INSERT OR DELETE OR UPDATE OF state ON authentications
FOR EACH ROW EXECUTE FUNCTION authentications_track_pending();
