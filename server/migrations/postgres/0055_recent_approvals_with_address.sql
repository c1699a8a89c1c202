-- `recent_authentication` reads the addresses of the user's newest approvals in its window
-- (`accessing_ip IS NOT NULL`). The index held every approval, so a user approved without an
-- address (CIBA requests, customer requests that give none) made each look-back step over all of
-- those approvals in the window before it found the ones with an address, and every such
-- approval wrote an index entry that nothing reads. The index now holds only approvals with an
-- address: the look-back reads exactly its rows, and an approval without one writes no entry.
DROP INDEX authentications_approvals_by_user;
CREATE INDEX authentications_approvals_by_user
    ON authentications (application_id, user_id, answered_at, accessing_ip)
    WHERE state = 'approved' AND accessing_ip IS NOT NULL;
