//! Provider metadata (OpenID Connect Discovery 1.0 with the CIBA members) and the JWKS.

use serde_json::{Value, json};
use tessera_protocol::ciba::{
    ACR_MOBILE_USER_VERIFIED, AUTH_REQ_ID_CLAIM, AUTHORIZATION_CODE_GRANT_TYPE, CIBA_GRANT_TYPE,
};

use super::authorize::{ACR_DEVICE_KEY, ACR_DEVICE_REGISTRATION, ACR_MFA, AUTHORIZE_PATH};

use super::error::OAuthError;
use super::{
    BACKCHANNEL_PATH, JWKS_PATH, SUPPORTED_SCOPES, TOKEN_PATH, USERINFO_PATH, endpoint_url, issuer,
};
use crate::domain::Ctx;

/// Asymmetric algorithms accepted for client assertions and signed requests.
pub(crate) const CLIENT_SIGNING_ALGS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// The languages the hosted prompt speaks (`ui_locales`; English is the fallback).
pub(crate) const UI_LOCALES: &[&str] = &["en"];

/// The provider metadata document.
pub(crate) fn configuration(state: &Ctx) -> Value {
    json!({
        "issuer": issuer(state),
        "authorization_endpoint": endpoint_url(state, AUTHORIZE_PATH),
        "backchannel_authentication_endpoint": endpoint_url(state, BACKCHANNEL_PATH),
        "token_endpoint": endpoint_url(state, TOKEN_PATH),
        "jwks_uri": endpoint_url(state, JWKS_PATH),
        "userinfo_endpoint": endpoint_url(state, USERINFO_PATH),
        "backchannel_token_delivery_modes_supported": ["poll", "ping", "push"],
        "backchannel_authentication_request_signing_alg_values_supported": CLIENT_SIGNING_ALGS,
        "backchannel_user_code_parameter_supported": true,
        "grant_types_supported": [CIBA_GRANT_TYPE, AUTHORIZATION_CODE_GRANT_TYPE, "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": CLIENT_SIGNING_ALGS,
        "id_token_signing_alg_values_supported": ["ES256"],
        // `sub` is `<application_id>:<user_id>`: one value for every client of an application,
        // different values across applications (the application is the pairwise sector).
        "subject_types_supported": ["pairwise"],
        // Redirect MFA: the authorization code flow, PKCE with S256 only, every request a
        // request object signed by the client (carrying login_hint).
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "request_parameter_supported": true,
        "request_uri_parameter_supported": false,
        "require_signed_request_object": true,
        "request_object_signing_alg_values_supported": CLIENT_SIGNING_ALGS,
        "authorization_response_iss_parameter_supported": true,
        "claims_parameter_supported": false,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "ui_locales_supported": UI_LOCALES,
        "scopes_supported": SUPPORTED_SCOPES,
        "acr_values_supported": [ACR_MOBILE_USER_VERIFIED, ACR_MFA, ACR_DEVICE_KEY, ACR_DEVICE_REGISTRATION],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "acr", "amr", "at_hash", "rt_hash", "name", "nonce", "preferred_username", "flow_status", "flow_result", "auth_result", "auth_context", AUTH_REQ_ID_CLAIM],
    })
}

/// The ID token signing keys (the current one and those it replaced, until their tokens
/// expire), as a JWK Set.
pub(crate) async fn jwks(state: &Ctx) -> Result<Value, OAuthError> {
    let ttl = i64::from(state.config.oidc_token_ttl);
    Ok(super::keys::jwks(&state.db, state.now(), ttl).await?)
}
