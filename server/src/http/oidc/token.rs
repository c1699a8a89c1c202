//! `POST /oidc/token`: the CIBA grant (poll and ping modes) and refresh tokens.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{form_and_credentials, uncached};
use crate::domain::Ctx;
use crate::domain::ciba::{OAuthError, token};

/// `POST /oidc/token`: polls a CIBA request (`authorization_pending`, `slow_down` while it is
/// pending) or refreshes tokens.
#[utoipa::path(post, path = "/oidc/token", tag = "openid",
    operation_id = "oidc_token",
    security(("client_basic" = []), ("client_form" = [])),
    request_body(content = super::TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = tessera_protocol::ciba::TokenResponse),
              (status = 400, description = "invalid_request, invalid_grant, unsupported_grant_type, authorization_pending, slow_down, expired_token, invalid_scope", body = tessera_protocol::ciba::OAuthErrorResponse),
              (status = 401, description = "invalid_client", body = tessera_protocol::ciba::OAuthErrorResponse),
              (status = 403, description = "access_denied", body = tessera_protocol::ciba::OAuthErrorResponse)))]
pub(crate) async fn token(
    State(state): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (form, basic) = form_and_credentials(&headers, &body)?;
    let tokens = token::exchange(&state, basic, &form).await?;
    Ok(uncached(tokens))
}
