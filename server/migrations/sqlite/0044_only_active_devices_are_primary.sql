-- Only an active device is a user's primary device. A device held for a passcode by a flow took
-- the flag when the user had no active primary device, and kept it once rejected; the user's
-- next device then found a primary device, none active, paired active without it, and every
-- later device paired without the approval "verify new devices with the primary device" asks.
-- The flag leaves every device that is not active, and each user with active devices but no
-- active primary one gets their oldest active device as primary (as an unpairing chooses it).
UPDATE enrollments SET is_primary = 0 WHERE is_primary = 1 AND status <> 'active';
UPDATE enrollments SET is_primary = 1
 WHERE status = 'active'
   AND enrollment_id = (
       SELECT oldest.enrollment_id FROM enrollments oldest
        WHERE oldest.application_id = enrollments.application_id
          AND oldest.user_id = enrollments.user_id
          AND oldest.status = 'active'
        ORDER BY oldest.paired_at, oldest.enrollment_id LIMIT 1)
   AND NOT EXISTS (
       SELECT 1 FROM enrollments chosen
        WHERE chosen.application_id = enrollments.application_id
          AND chosen.user_id = enrollments.user_id
          AND chosen.status = 'active'
          AND chosen.is_primary = 1);
