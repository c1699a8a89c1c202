-- At most one ID token signing key signs. Two instances (or two first token requests) that
-- found no key at the same moment could each add one: both inserts passed, and two keys were
-- left unretired. This index refuses the second (its insert fails as a duplicate, and its
-- caller uses the key that won). Keys already left unretired side by side keep all but the
-- newest published, retired now, so the tokens they signed still verify until they expire.
UPDATE oidc_signing_keys SET retired_at = CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)
 WHERE retired_at IS NULL
   AND kid <> (SELECT kid FROM oidc_signing_keys WHERE retired_at IS NULL
               ORDER BY created_at DESC, kid LIMIT 1);
CREATE UNIQUE INDEX oidc_signing_keys_one_signing ON oidc_signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;
