-- A policy's look-backs at the user's history are counted by the database over indexes that hold
-- only what they count, so they cost the same for a user with a long history as for a new one
-- (docs/policy.md, "What a decision reads").
--
-- Whether an authentication counts toward a policy's push counts (`push_requests`,
-- `limit_push`): a push request (approval, transaction, CIBA) that no policy denied or approved
-- outright. Written once, when the request is stored (its kind and decision never change).
ALTER TABLE authentications ADD COLUMN push_counted INTEGER NOT NULL DEFAULT 0;
UPDATE authentications SET push_counted = 1
 WHERE kind IN ('approval', 'transaction', 'ciba')
   AND (policy IS NULL
        OR (policy NOT LIKE '%"effect":"deny"%' AND policy NOT LIKE '%"effect":"approve"%'));
CREATE INDEX authentications_counted_pushes
    ON authentications (application_id, user_id, created_at) WHERE push_counted = 1;
-- `recent_authentication`: the user's approvals by when they were answered.
CREATE INDEX authentications_approvals_by_user
    ON authentications (application_id, user_id, answered_at) WHERE state = 'approved';
-- Geovelocity: the user's latest decision with a location.
CREATE INDEX policy_decisions_located_by_user
    ON policy_decisions (application_id, user_id, created_at) WHERE latitude IS NOT NULL;
