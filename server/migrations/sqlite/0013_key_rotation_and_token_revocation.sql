-- Device-facing server key rotation. A key is published from its creation until it is retired
-- (its grace period after a rotation ended) or revoked; the newest published key that has
-- become the signer (`signer_since`) signs. Revoked keys are never trusted again.
ALTER TABLE server_keys ADD COLUMN signer_since BIGINT;
ALTER TABLE server_keys ADD COLUMN retire_at BIGINT;
ALTER TABLE server_keys ADD COLUMN retired_at BIGINT;
ALTER TABLE server_keys ADD COLUMN revoked_at BIGINT;

-- The published key sets, each signed once (never per request) by a key of the set before it,
-- so that a device pinning an older set can follow the chain. `sequence` numbers them per issuer
-- (the public URL the set names: instances on one database normally share one).
CREATE TABLE server_key_sets (
    issuer      TEXT NOT NULL,
    sequence    BIGINT NOT NULL,
    signer_kid  TEXT NOT NULL,
    signed      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (issuer, sequence)
);

-- Every access and refresh token issued from one CIBA grant (and the refreshes after it) shares
-- a family: a refresh token presented twice revokes the whole family.
ALTER TABLE oidc_tokens ADD COLUMN family_id TEXT;
CREATE INDEX oidc_tokens_by_family ON oidc_tokens (family_id);
CREATE INDEX oidc_tokens_by_user ON oidc_tokens (user_id, client_id);
