-- OIDC redirect MFA (the authorization code flow). A client's redirect URIs and grant types, as
-- JSON arrays; NULL grant_types is a registration made before the authorization endpoint existed
-- (the CIBA grant and refresh_token).
ALTER TABLE ciba_clients ADD COLUMN redirect_uris TEXT;
ALTER TABLE ciba_clients ADD COLUMN grant_types TEXT;
-- The secret of a redirect MFA client with a secret-based method, sealed with the data key
-- (unlike the digest in secret_digest it must be read back: it verifies the client's HMAC-signed
-- request objects, as Duo's clients sign them).
ALTER TABLE ciba_clients ADD COLUMN request_object_secret TEXT;

-- One authorization request (GET /oidc/authorize): the flow it runs, the browser it is bound to
-- (SHA-256 of the cookie's value only), and, once the flow ended and the browser came back, the
-- code (SHA-256 only) issued ONCE (resumed_at is taken with a conditional update). A code is
-- redeemed once (code_used_at, conditional update); tokens issued from it share family_id, so a
-- second redemption revokes them. `claims` are the ID token's claims about the authentication
-- (acr, amr, auth_time, the flow's status and Duo-style result), fixed when the browser resumed.
CREATE TABLE oidc_authorizations (
    id               TEXT PRIMARY KEY,
    client_id        TEXT NOT NULL REFERENCES ciba_clients(client_id) ON DELETE CASCADE,
    application_id   TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    flow_id          TEXT NOT NULL,
    redirect_uri     TEXT NOT NULL,
    state            TEXT,
    nonce            TEXT,
    code_challenge   TEXT NOT NULL,
    scope            TEXT NOT NULL,
    acr_values       TEXT,
    browser_digest   TEXT NOT NULL,
    family_id        TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    resumed_at       BIGINT,
    claims           TEXT,
    code_digest      TEXT UNIQUE,
    code_expires_at  BIGINT,
    code_used_at     BIGINT
);
CREATE INDEX oidc_authorizations_by_family ON oidc_authorizations (family_id);
CREATE INDEX oidc_authorizations_by_expiry ON oidc_authorizations (expires_at);
