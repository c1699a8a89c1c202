//! `GET /.well-known/openid-configuration` and `GET /oidc/jwks`.

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use crate::domain::Ctx;
use crate::domain::ciba::OAuthError;
use crate::domain::ciba::discovery;

/// `GET /.well-known/openid-configuration`.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "openid",
    operation_id = "oidc_discovery",
    responses((status = 200, description = "The OpenID Provider metadata (OpenID Connect Discovery 1.0, CIBA Core §4)", body = Object)))]
pub(crate) async fn configuration(State(state): State<Ctx>) -> Json<Value> {
    Json(discovery::configuration(&state))
}

/// `GET /oidc/jwks`: the ID token signing keys (the current one and those it replaced, until
/// their tokens expire).
#[utoipa::path(get, path = "/oidc/jwks", tag = "openid",
    operation_id = "oidc_jwks",
    responses((status = 200, description = "A JWK Set (RFC 7517)", body = Object)))]
pub(crate) async fn jwks(State(state): State<Ctx>) -> Result<Json<Value>, OAuthError> {
    Ok(Json(discovery::jwks(&state).await?))
}
