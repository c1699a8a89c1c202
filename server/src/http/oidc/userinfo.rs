//! `GET /oidc/userinfo`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{bearer_token, uncached};
use crate::domain::Ctx;
use crate::domain::ciba::{OAuthError, token};

/// `GET /oidc/userinfo` with `Authorization: Bearer <access token>`.
#[utoipa::path(get, path = "/oidc/userinfo", tag = "openid",
    operation_id = "oidc_userinfo",
    security(("access_token" = [])),
    responses((status = 200, description = "The user's claims (`sub`, and `name` with the `profile` scope)", body = Object),
              (status = 401, description = "invalid_token", body = tessera_protocol::ciba::OAuthErrorResponse)))]
pub(crate) async fn userinfo(
    State(state): State<Ctx>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let claims = token::userinfo(&state, bearer_token(&headers)).await?;
    Ok(uncached(claims))
}
