//! The calling application's authentication settings: number matching mode and push-bombing
//! limits.

use axum::Json;
use axum::extract::State;
use tessera_protocol::api::{AuthenticationSettings, AuthenticationSettingsView};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use crate::domain::{Ctx, applications};

/// The application's number matching mode and push-bombing limits, with the limits in force.
#[utoipa::path(get, path = "/v1/application/authentication-settings", tag = "customer",
    responses((status = 200, body = AuthenticationSettingsView),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_settings(
    State(ctx): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<AuthenticationSettingsView>, ApiError> {
    let view = applications::authentication_settings(&ctx.db, &ctx.config, &auth.0.id).await?;
    Ok(Json(view))
}

/// Replaces the application's number matching mode and push-bombing limits (a limit left out
/// uses the server-wide value).
#[utoipa::path(put, path = "/v1/application/authentication-settings", tag = "customer",
    request_body = AuthenticationSettings,
    responses((status = 200, body = AuthenticationSettingsView),
              (status = 400, description = "invalid_request: a limit out of range", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_settings(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<AuthenticationSettings>,
) -> Result<Json<AuthenticationSettingsView>, ApiError> {
    let view =
        applications::set_authentication_settings(&ctx.db, &ctx.config, &auth.0.id, body).await?;
    Ok(Json(view))
}
