//! The calling application's attestation settings: mode (`off`, `report`, `require`) and the
//! Android and iOS apps whose attestations it accepts.

use axum::Json;
use axum::extract::State;
use tessera_protocol::api::AttestationSettings;

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use crate::domain::{Ctx, attestation};

/// The application's attestation settings.
#[utoipa::path(get, path = "/v1/application/attestation-settings", tag = "customer",
    responses((status = 200, body = AttestationSettings),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_attestation_settings(
    State(ctx): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<AttestationSettings>, ApiError> {
    Ok(Json(attestation::settings::get(&ctx.db, &auth.0.id).await?))
}

/// Replaces the application's attestation settings.
#[utoipa::path(put, path = "/v1/application/attestation-settings", tag = "customer",
    request_body = AttestationSettings,
    responses((status = 200, body = AttestationSettings),
              (status = 400, description = "invalid_request: a malformed package, digest, team or bundle id, or `require` without an app", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_attestation_settings(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<AttestationSettings>,
) -> Result<Json<AttestationSettings>, ApiError> {
    Ok(Json(
        attestation::settings::set(&ctx.db, &auth.0.id, body).await?,
    ))
}
