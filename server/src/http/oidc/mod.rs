//! The OpenID Provider's endpoints (CIBA): discovery and JWKS, backchannel authentication,
//! token, userinfo. Handlers read the form and the headers, call one `domain::ciba` operation
//! and answer; this module holds what they share: the form and credential extraction and the
//! OAuth error answer (never cached; `WWW-Authenticate` on `invalid_client` after HTTP Basic
//! and on `invalid_token`; `Retry-After` on `temporarily_unavailable`).

pub(crate) mod authorize;
pub(crate) mod backchannel;
pub(crate) mod discovery;
pub(crate) mod token;
pub(crate) mod userinfo;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use tessera_protocol::ciba::OAuthErrorResponse;

use super::errors::RETRY_AFTER_SECONDS;
use crate::domain::ciba::client_auth::invalid_client;
use crate::domain::ciba::error::invalid_request;
use crate::domain::ciba::{BasicCredentials, Form, OAuthCode, OAuthError};

/// The backchannel authentication request's form (CIBA Core §7.1), as documented in the OpenAPI
/// document. The handler reads the form itself ([`form_and_credentials`]): this type only
/// describes it. Client authentication: HTTP Basic, `client_secret` in the form, or a
/// `private_key_jwt` assertion.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct BackchannelForm {
    /// Must include `openid`.
    #[schema(max_length = 1024)]
    scope: String,
    /// The user: the customer's user id (one of `login_hint`, `id_token_hint`, `login_hint_token`).
    #[schema(max_length = 1024)]
    login_hint: Option<String>,
    /// An ID token this provider issued to the client, naming the user.
    id_token_hint: Option<String>,
    /// Not supported (refused with `invalid_request`).
    login_hint_token: Option<String>,
    /// Text shown on the device with the request.
    #[schema(max_length = 1024)]
    binding_message: Option<String>,
    /// The user's secret code, when the client's registration requires one.
    user_code: Option<String>,
    /// Seconds the request may stay pending.
    #[schema(minimum = 1)]
    requested_expiry: Option<u64>,
    /// Ping and push modes: the bearer token the provider sends with its notification.
    #[schema(max_length = 1024)]
    client_notification_token: Option<String>,
    /// Requested authentication context classes.
    acr_values: Option<String>,
    /// A signed authentication request (CIBA Core §7.1.1) carrying the parameters above.
    request: Option<String>,
    /// The client's id (with `client_secret` or a client assertion, when not sent with HTTP Basic).
    client_id: Option<String>,
    /// The client's secret (`client_secret_post`).
    client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` (`private_key_jwt`).
    client_assertion_type: Option<String>,
    /// The client's signed assertion (`private_key_jwt`).
    client_assertion: Option<String>,
}

/// The token request's form: the CIBA grant (`urn:openid:params:grant-type:ciba` with
/// `auth_req_id`) or `refresh_token` (with `refresh_token`). Documentation only, like
/// [`BackchannelForm`]; client authentication as there.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct TokenForm {
    /// `urn:openid:params:grant-type:ciba` or `refresh_token`.
    grant_type: String,
    /// The CIBA grant: the acknowledged request's id.
    auth_req_id: Option<String>,
    /// The refresh grant: the refresh token.
    refresh_token: Option<String>,
    /// The refresh grant: a narrower scope.
    scope: Option<String>,
    /// The client's id (with `client_secret` or a client assertion, when not sent with HTTP Basic).
    client_id: Option<String>,
    /// The client's secret (`client_secret_post`).
    client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer` (`private_key_jwt`).
    client_assertion_type: Option<String>,
    /// The client's signed assertion (`private_key_jwt`).
    client_assertion: Option<String>,
}

fn status(code: OAuthCode) -> StatusCode {
    match code {
        OAuthCode::InvalidClient | OAuthCode::InvalidToken => StatusCode::UNAUTHORIZED,
        OAuthCode::AccessDenied => StatusCode::FORBIDDEN,
        OAuthCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        OAuthCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Marks a response as never to be cached.
fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A JSON answer that must not be cached (tokens, acknowledgements, claims).
pub(crate) fn uncached<T: Serialize>(body: T) -> Response {
    let mut response = Json(body).into_response();
    no_store(&mut response);
    response
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorResponse {
            error: self.code.as_str().to_string(),
            error_description: Some(self.description),
            auth_req_id: None,
        };
        let mut response = (status(self.code), Json(body)).into_response();
        let headers = response.headers_mut();
        if self.code == OAuthCode::InvalidClient && self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tessera\""),
            );
        }
        if self.code == OAuthCode::InvalidToken {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if self.code == OAuthCode::TemporarilyUnavailable {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        no_store(&mut response);
        response
    }
}

/// The request's form parameters and HTTP Basic client credentials, in that order of checks:
/// the body must be `application/x-www-form-urlencoded`.
pub(crate) fn form_and_credentials(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Form, Option<BasicCredentials>), OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let form = Form::new(pairs)?;
    Ok((form, basic_credentials(headers)?))
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<BasicCredentials>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| invalid_client(true))?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(invalid_client(true));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid_client(true))?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid_client(true))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| invalid_client(true))?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before joining.
    let id = percent_decode(id).ok_or_else(|| invalid_client(true))?;
    let secret = percent_decode(secret).ok_or_else(|| invalid_client(true))?;
    Ok(Some(BasicCredentials { id, secret }))
}

fn percent_decode(text: &str) -> Option<String> {
    let plus = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_service_says_when_to_retry_and_is_never_cached() {
        let response = OAuthError::new(OAuthCode::TemporarilyUnavailable, "retry").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).unwrap(),
            RETRY_AFTER_SECONDS
        );
        assert_eq!(
            response.headers().get(header::CACHE_CONTROL).unwrap(),
            "no-store"
        );
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("cli%3Ax:s+e%2Bc");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let creds = basic_credentials(&headers).unwrap().unwrap();
        assert_eq!(creds.id, "cli:x");
        assert_eq!(creds.secret, "s e+c");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        let e = basic_credentials(&headers).err().unwrap();
        assert!(e.basic_challenge);
    }
}
