//! `POST /oidc/token`: the CIBA grant (poll and ping modes) and refresh tokens.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{form_and_credentials, uncached};
use crate::domain::Ctx;
use crate::domain::ciba::{OAuthError, token};

/// `POST /oidc/token`.
pub(crate) async fn token(
    State(state): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (form, basic) = form_and_credentials(&headers, &body)?;
    let tokens = token::exchange(&state, basic, &form).await?;
    Ok(uncached(tokens))
}
