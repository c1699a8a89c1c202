-- `recent_authentication` reads the address of each of the user's approvals in its look-back
-- window. The index held only when they were answered, so every approval in the window cost a
-- read of its table row (the whole request, signed text and all): a user approved thousands of
-- times within the hour made every policy decision read thousands of rows. The address is now in
-- the index, so the look-back reads the index alone.
DROP INDEX authentications_approvals_by_user;
CREATE INDEX authentications_approvals_by_user
    ON authentications (application_id, user_id, answered_at, accessing_ip) WHERE state = 'approved';
