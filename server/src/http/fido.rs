//! Customer API for FIDO2 / WebAuthn: the application's relying-party settings and a user's
//! FIDO credentials (list, rename, remove). The rules are in [`crate::domain::fido`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::fido::{
    FidoCredential, FidoCredentialList, FidoSettings, RenameFidoCredential,
};

use super::errors::ApiError;
use super::extract::{ApiJson, ApiPath, AppAuth, parse_user_id};
use crate::domain::{Ctx, fido};

/// The application's FIDO settings.
#[utoipa::path(get, path = "/v1/application/fido-settings", tag = "customer",
    operation_id = "get_fido_settings",
    responses((status = 200, body = FidoSettings),
              (status = 401, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_fido_settings(
    State(ctx): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<FidoSettings>, ApiError> {
    Ok(Json(fido::settings::get(&ctx.db, &auth.0.id).await?))
}

/// Replaces the application's FIDO settings (RP id, origins, user verification, attestation
/// with its AAGUID allow-list, discoverable credentials).
#[utoipa::path(put, path = "/v1/application/fido-settings", tag = "customer",
    operation_id = "set_fido_settings",
    request_body = FidoSettings,
    responses((status = 200, body = FidoSettings),
              (status = 400, description = "invalid_request: an origin, RP id or AAGUID that does not check, or `direct` without AAGUIDs", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_fido_settings(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<FidoSettings>,
) -> Result<Json<FidoSettings>, ApiError> {
    Ok(Json(fido::settings::set(&ctx.db, &auth.0.id, body).await?))
}

/// The user's FIDO credentials.
#[utoipa::path(get, path = "/v1/users/{user_id}/fido-credentials", tag = "customer",
    operation_id = "list_fido_credentials",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    responses((status = 200, body = FidoCredentialList),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn list_fido_credentials(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<FidoCredentialList>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        fido::credentials::list(&ctx, &auth.0.id, &user_id).await?,
    ))
}

/// Renames one of the user's FIDO credentials.
#[utoipa::path(patch, path = "/v1/users/{user_id}/fido-credentials/{credential_id}", tag = "customer",
    operation_id = "rename_fido_credential",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user"),
           ("credential_id" = String, Path, description = "The credential's id (`fido_…`)")),
    request_body = RenameFidoCredential,
    responses((status = 200, body = FidoCredential),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "fido_credential_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn rename_fido_credential(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiPath((user_id, credential_id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RenameFidoCredential>,
) -> Result<Json<FidoCredential>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        fido::credentials::rename(&ctx, &auth.0.id, &user_id, &credential_id, &body.nickname)
            .await?,
    ))
}

/// Removes one of the user's FIDO credentials.
#[utoipa::path(delete, path = "/v1/users/{user_id}/fido-credentials/{credential_id}", tag = "customer",
    operation_id = "remove_fido_credential",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user"),
           ("credential_id" = String, Path, description = "The credential's id (`fido_…`)")),
    responses((status = 204, description = "Removed"),
              (status = 404, description = "fido_credential_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_fido_credential(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiPath((user_id, credential_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    fido::credentials::remove(&ctx, &auth.0.id, &user_id, &credential_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
