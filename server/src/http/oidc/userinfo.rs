//! `GET /oidc/userinfo`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{bearer_token, uncached};
use crate::domain::Ctx;
use crate::domain::ciba::{OAuthError, token};

/// `GET /oidc/userinfo` with `Authorization: Bearer <access token>`.
pub(crate) async fn userinfo(
    State(state): State<Ctx>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let claims = token::userinfo(&state, bearer_token(&headers)).await?;
    Ok(uncached(claims))
}
