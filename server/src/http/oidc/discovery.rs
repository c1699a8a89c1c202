//! `GET /.well-known/openid-configuration` and `GET /oidc/jwks`.

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use crate::domain::Ctx;
use crate::domain::ciba::OAuthError;
use crate::domain::ciba::discovery;

/// `GET /.well-known/openid-configuration`.
pub(crate) async fn configuration(State(state): State<Ctx>) -> Json<Value> {
    Json(discovery::configuration(&state))
}

/// `GET /oidc/jwks`: the ID token signing keys (the current one and those it replaced, until
/// their tokens expire).
pub(crate) async fn jwks(State(state): State<Ctx>) -> Result<Json<Value>, OAuthError> {
    Ok(Json(discovery::jwks(&state).await?))
}
