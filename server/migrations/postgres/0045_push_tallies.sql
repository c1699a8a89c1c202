-- A user's counted pushes (`push_counted = 1`: what a policy's `push_requests` and `limit_push`
-- count), tallied per second of their creation: a count over a window sums one row per second
-- in which the user was sent pushes, not one per push (docs/policy.md, "What a decision
-- reads"). Before, the count walked `authentications_counted_pushes`, an index entry for every
-- push in the window (and, on pages not yet all-visible, the row itself): a rule over a day, or
-- a user sent thousands, walked thousands on every new request. `created_at` is whole seconds,
-- so a window's sum is exactly the count it replaces.
--
-- Kept by the triggers below, so every way a request is stored or removed (a new request, its
-- user's deletion, retention) keeps it true; a request's kind and policy decision, and so
-- `push_counted`, never change after it is stored, and an update of what a tally is keyed by
-- moves it. A row goes when its last push goes. Requests to one user in one second wait on one
-- row's lock until they commit; the admissions that count pushes take the user's lock anyway.
CREATE TABLE push_tallies (
    application_id TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    pushes         INTEGER NOT NULL,
    PRIMARY KEY (application_id, user_id, created_at)
);

INSERT INTO push_tallies (application_id, user_id, created_at, pushes)
SELECT application_id, user_id, created_at, COUNT(*)
  FROM authentications WHERE push_counted = 1
 GROUP BY application_id, user_id, created_at;

CREATE FUNCTION authentications_tally_pushes() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.push_counted = 1 THEN
        UPDATE push_tallies SET pushes = pushes - 1
         WHERE application_id = OLD.application_id AND user_id = OLD.user_id
           AND created_at = OLD.created_at;
        DELETE FROM push_tallies
         WHERE application_id = OLD.application_id AND user_id = OLD.user_id
           AND created_at = OLD.created_at AND pushes <= 0;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.push_counted = 1 THEN
        INSERT INTO push_tallies (application_id, user_id, created_at, pushes)
        VALUES (NEW.application_id, NEW.user_id, NEW.created_at, 1)
        ON CONFLICT (application_id, user_id, created_at)
        DO UPDATE SET pushes = push_tallies.pushes + 1;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER authentications_push_tallied AFTER INSERT ON authentications
FOR EACH ROW WHEN (NEW.push_counted = 1) EXECUTE FUNCTION authentications_tally_pushes();
CREATE TRIGGER authentications_push_untallied AFTER DELETE ON authentications
FOR EACH ROW WHEN (OLD.push_counted = 1) EXECUTE FUNCTION authentications_tally_pushes();
CREATE TRIGGER authentications_push_retallied
AFTER UPDATE OF application_id, user_id, created_at, push_counted ON authentications
FOR EACH ROW WHEN (OLD.push_counted = 1 OR NEW.push_counted = 1)
EXECUTE FUNCTION authentications_tally_pushes();

-- The counts read the tallies alone now.
DROP INDEX authentications_counted_pushes;

-- A new request's admission (migration 0035) counts a policy's `limit_push` from the tallies.
CREATE OR REPLACE FUNCTION admission_verdict(
    lock_mode integer,
    application_class integer,
    application_key integer,
    user_class integer,
    user_key integer,
    p_application_id text,
    p_user_id text,
    p_now bigint,
    quota bigint,
    pending_since bigint,
    user_pending_most bigint,
    recent_since bigint,
    user_recent_most bigint,
    push_since bigint,
    pushes_most bigint,
    OUT admitted boolean,
    OUT application_pending bigint,
    OUT user_pending bigint,
    OUT user_recent bigint,
    OUT pushes bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF lock_mode IN (2, 3) THEN
        PERFORM pg_advisory_xact_lock_shared(application_class, application_key);
    ELSIF lock_mode = 4 THEN
        PERFORM pg_advisory_xact_lock(application_class, application_key);
    END IF;
    IF lock_mode IN (1, 3) THEN
        PERFORM pg_advisory_xact_lock(user_class, user_key);
    END IF;
    application_pending := 0;
    user_pending := 0;
    user_recent := 0;
    pushes := 0;
    IF quota IS NOT NULL THEN
        SELECT COALESCE(SUM(e.pending), 0) INTO application_pending FROM pending_expiries e
        WHERE e.application_id = p_application_id AND e.expires_at > p_now;
    END IF;
    IF user_pending_most IS NOT NULL THEN
        SELECT COUNT(*) INTO user_pending FROM (
            SELECT 1 FROM authentications a
            WHERE a.application_id = p_application_id AND a.user_id = p_user_id
              AND a.created_at >= pending_since
              AND a.kind <> 'silent' AND a.state = 'pending' AND a.expires_at > p_now
            LIMIT user_pending_most) counted;
    END IF;
    IF user_recent_most IS NOT NULL THEN
        SELECT COUNT(*) INTO user_recent FROM (
            SELECT 1 FROM authentications a
            WHERE a.application_id = p_application_id AND a.user_id = p_user_id
              AND a.created_at >= recent_since
              AND a.kind <> 'silent' AND a.state IN ('pending', 'expired', 'denied')
            LIMIT user_recent_most) counted;
    END IF;
    IF pushes_most IS NOT NULL THEN
        -- At most pushes_most seconds are summed: each holds one push or more.
        SELECT LEAST(COALESCE(SUM(counted.pushes), 0), pushes_most) INTO pushes FROM (
            SELECT t.pushes FROM push_tallies t
            WHERE t.application_id = p_application_id AND t.user_id = p_user_id
              AND t.created_at > push_since
            LIMIT pushes_most) counted;
    END IF;
    admitted := (quota IS NULL OR application_pending < quota)
        AND (user_pending_most IS NULL OR user_pending < user_pending_most)
        AND (user_recent_most IS NULL OR user_recent < user_recent_most)
        AND (pushes_most IS NULL OR pushes < pushes_most);
END
$$;
