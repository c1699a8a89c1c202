//! The server as an OpenID Provider for Client-Initiated Backchannel Authentication (OpenID
//! Connect CIBA Core 1.0), with the user's paired device as the authentication device. The
//! rules only: the HTTP endpoints live in `http::oidc`, the notification posts in
//! `delivery::ciba`.
//!
//! - [`discovery`]: provider metadata and the JWKS.
//! - [`clients`]: client registration (customer API and admin CLI) and users' CIBA user codes.
//! - [`client_auth`]: form parameters, client authentication and client-signed JWTs.
//! - [`client_hints`]: the application each client was last found for, so a backchannel
//!   request reads its user beside the client's own read.
//! - [`authorize`]: redirect MFA: the authorization endpoint (code flow with PKCE and a signed
//!   request object) and the resume that issues the code once the flow has ended.
//! - [`backchannel`]: the backchannel authentication request.
//! - [`token`]: the token grants, the tokens issued, and userinfo.
//! - [`notify`]: the ping and push notification queue (claim, backoff, finish, sweep).
//! - [`keys`]: ID token signing keys and their rotation.
//! - [`error`]: the OAuth error (code and description).

pub(crate) mod authorize;
pub(crate) mod backchannel;
pub(crate) mod client_auth;
pub mod client_hints;
pub mod clients;
pub(crate) mod discovery;
pub(crate) mod error;
pub mod keys;
pub(crate) mod notify;
pub(crate) mod token;

pub(crate) use client_auth::{BasicCredentials, Form};
pub(crate) use error::{OAuthCode, OAuthError};
pub(crate) use notify::NotifierHandle;

use tessera_protocol::ids::ApplicationId;

use super::Ctx;

/// Scopes a client may ask for.
pub(crate) const SUPPORTED_SCOPES: &[&str] = &["openid", "profile", "offline_access"];
/// The backchannel authentication endpoint's path.
pub(crate) const BACKCHANNEL_PATH: &str = "/oidc/backchannel";
/// The token endpoint's path.
pub(crate) const TOKEN_PATH: &str = "/oidc/token";
/// The JWKS endpoint's path.
pub(crate) const JWKS_PATH: &str = "/oidc/jwks";
/// The userinfo endpoint's path.
pub(crate) const USERINFO_PATH: &str = "/oidc/userinfo";

/// The issuer: the server's public URL.
pub(crate) fn issuer(state: &Ctx) -> String {
    state.public_url.as_str().to_string()
}

/// The `sub` of a user's ID tokens and userinfo: the user id namespaced by its application
/// (`<application_id>:<user_id>`), so that `iss` + `sub` name one person even when two
/// applications of this server both have a user called `alice`. Every client of one
/// application sees the same subject (the application is the sector of a pairwise subject).
pub(crate) fn subject(app: &ApplicationId, user_id: &str) -> String {
    format!("{}:{user_id}", app.as_str())
}

/// The user id of `app` that a [`subject`] names; `None` for a subject of another application
/// or text that is not a subject.
pub(crate) fn user_of_subject<'a>(app: &ApplicationId, sub: &'a str) -> Option<&'a str> {
    sub.strip_prefix(app.as_str())?.strip_prefix(':')
}

/// An endpoint's absolute URL.
pub(crate) fn endpoint_url(state: &Ctx, path: &str) -> String {
    format!("{}{path}", state.public_url.as_str())
}

/// The `access_denied` description of a denied request: its reason, so the relying party can
/// tell a declined request from a wrong number (`wrong_number`, a fraud signal).
pub(crate) fn denial_description(
    reason: Option<tessera_protocol::authentication::DenialReason>,
) -> &'static str {
    use tessera_protocol::authentication::DenialReason;
    match reason {
        Some(DenialReason::WrongNumber) => {
            "wrong_number: the user answered with another number than the one shown; the request is denied"
        }
        Some(DenialReason::ReportedFraud) => {
            "reported_fraud: the user denied the request and reported it as fraud"
        }
        Some(DenialReason::Declined) | None => "the user denied the request",
    }
}

#[cfg(test)]
mod crowd_tests;
#[cfg(test)]
pub(crate) mod flow_tests;

#[cfg(test)]
mod subject_tests {
    use super::*;

    #[test]
    fn subjects_are_namespaced_by_application_and_read_back_only_there() {
        let a: ApplicationId = ApplicationId::generate();
        let b: ApplicationId = ApplicationId::generate();
        assert_ne!(subject(&a, "alice"), subject(&b, "alice"));
        assert_eq!(user_of_subject(&a, &subject(&a, "alice")), Some("alice"));
        assert_eq!(user_of_subject(&a, &subject(&a, "a:b")), Some("a:b"));
        assert_eq!(user_of_subject(&b, &subject(&a, "alice")), None);
        assert_eq!(user_of_subject(&a, "alice"), None);
        assert_eq!(user_of_subject(&a, a.as_str()), None);
    }
}
