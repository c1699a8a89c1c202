-- A user's counted pushes (`push_counted = 1`: what a policy's `push_requests` and `limit_push`
-- count), tallied per second of their creation: a count over a window sums one row per second
-- in which the user was sent pushes, not one per push (docs/policy.md, "What a decision
-- reads"). Before, the count walked `authentications_counted_pushes`, an index entry for every
-- push in the window: a rule over a day, or a user sent thousands, walked thousands on every new
-- request. `created_at` is whole seconds, so a window's sum is exactly the count it replaces.
--
-- Kept by the triggers below, so every way a request is stored or removed (a new request, its
-- user's deletion, retention) keeps it true; a request's kind and policy decision, and so
-- `push_counted`, never change after it is stored, and an update of what a tally is keyed by
-- moves it. A row goes when its last push goes.
CREATE TABLE push_tallies (
    application_id TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    pushes         INTEGER NOT NULL,
    PRIMARY KEY (application_id, user_id, created_at)
) WITHOUT ROWID;

INSERT INTO push_tallies (application_id, user_id, created_at, pushes)
SELECT application_id, user_id, created_at, COUNT(*)
  FROM authentications WHERE push_counted = 1
 GROUP BY application_id, user_id, created_at;

CREATE TRIGGER authentications_push_tallied AFTER INSERT ON authentications
WHEN NEW.push_counted = 1
BEGIN
    INSERT INTO push_tallies (application_id, user_id, created_at, pushes)
    VALUES (NEW.application_id, NEW.user_id, NEW.created_at, 1)
    ON CONFLICT (application_id, user_id, created_at) DO UPDATE SET pushes = pushes + 1;
END;

CREATE TRIGGER authentications_push_untallied AFTER DELETE ON authentications
WHEN OLD.push_counted = 1
BEGIN
    UPDATE push_tallies SET pushes = pushes - 1
     WHERE application_id = OLD.application_id AND user_id = OLD.user_id
       AND created_at = OLD.created_at;
    DELETE FROM push_tallies
     WHERE application_id = OLD.application_id AND user_id = OLD.user_id
       AND created_at = OLD.created_at AND pushes <= 0;
END;

CREATE TRIGGER authentications_push_retallied
AFTER UPDATE OF application_id, user_id, created_at, push_counted ON authentications
WHEN OLD.push_counted = 1 OR NEW.push_counted = 1
BEGIN
    UPDATE push_tallies SET pushes = pushes - 1
     WHERE OLD.push_counted = 1 AND application_id = OLD.application_id
       AND user_id = OLD.user_id AND created_at = OLD.created_at;
    DELETE FROM push_tallies
     WHERE OLD.push_counted = 1 AND application_id = OLD.application_id
       AND user_id = OLD.user_id AND created_at = OLD.created_at AND pushes <= 0;
    INSERT INTO push_tallies (application_id, user_id, created_at, pushes)
    SELECT NEW.application_id, NEW.user_id, NEW.created_at, 1 WHERE NEW.push_counted = 1
    ON CONFLICT (application_id, user_id, created_at) DO UPDATE SET pushes = pushes + 1;
END;

-- The counts read the tallies alone now.
DROP INDEX authentications_counted_pushes;
