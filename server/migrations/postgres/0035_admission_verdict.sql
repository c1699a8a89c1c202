-- A new request's admission in one statement (`store::authentications::admit_at_once`).
--
-- Before, an admission was three round trips: `BEGIN` with the advisory locks, the insert that
-- counts and stores, `COMMIT`. The counts must be read after the locks are granted, so that they
-- see what the admission that held them committed; inside one statement they could not be,
-- because a statement reads from the snapshot taken when it began, before it waited for the
-- locks. A VOLATILE function takes a fresh snapshot for each query it runs: this one takes the
-- locks, then counts, and the insert that calls it (one statement, committed on its own) keeps
-- the locks until it commits.
--
-- lock_mode: 0 none, 1 the user's, 2 the application's shared, 3 the application's shared and
-- the user's, 4 the application's exclusive (`AdmissionLock`); the application's is taken first.
-- A limit given as NULL is not in force and not counted. The user's counts stop at their limit
-- (`LIMIT`): a count that reached it refuses, whatever lies beyond. The predicates are those of
-- `store::authentications` (USER_FACING, PENDING, UNAPPROVED, COUNTED_PUSH; a test compares
-- them).
CREATE FUNCTION admission_verdict(
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
        SELECT COUNT(*) INTO pushes FROM (
            SELECT 1 FROM authentications a
            WHERE a.application_id = p_application_id AND a.user_id = p_user_id
              AND a.push_counted = 1 AND a.created_at > push_since
            LIMIT pushes_most) counted;
    END IF;
    admitted := (quota IS NULL OR application_pending < quota)
        AND (user_pending_most IS NULL OR user_pending < user_pending_most)
        AND (user_recent_most IS NULL OR user_recent < user_recent_most)
        AND (pushes_most IS NULL OR pushes < pushes_most);
END
$$;
