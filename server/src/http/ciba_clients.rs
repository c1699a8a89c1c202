//! Customer API: the application's CIBA clients (relying parties) and its users' CIBA user
//! codes.

use super::extract::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::ciba::{
    CibaClientList, CibaClientRegistered, RegisterCibaClient, SetUserCode,
};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, parse_user_id};
use crate::domain::Ctx;
use crate::domain::ciba::clients;

/// Registers a CIBA client for the calling application.
#[utoipa::path(post, path = "/v1/ciba/clients", tag = "customer", request_body = RegisterCibaClient,
    responses((status = 201, body = CibaClientRegistered),
              (status = 400, description = "invalid_request (including refused notification endpoints)", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn register(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<RegisterCibaClient>,
) -> Result<(StatusCode, Json<CibaClientRegistered>), ApiError> {
    let registered = clients::register_client(&state, &auth.0.id, body).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

/// The calling application's CIBA clients.
#[utoipa::path(get, path = "/v1/ciba/clients", tag = "customer",
    responses((status = 200, body = CibaClientList)))]
pub(crate) async fn list(
    State(state): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<CibaClientList>, ApiError> {
    Ok(Json(clients::list(&state, &auth.0.id).await?))
}

/// Removes a CIBA client with its pending requests and tokens.
#[utoipa::path(delete, path = "/v1/ciba/clients/{client_id}", tag = "customer",
    params(("client_id" = String, Path, description = "The client")),
    responses((status = 204), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(client_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    clients::remove(&state, &auth.0.id, &client_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the user's CIBA user code.
#[utoipa::path(put, path = "/v1/users/{user_id}/ciba-user-code", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = SetUserCode,
    responses((status = 204), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_user_code(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<SetUserCode>,
) -> Result<StatusCode, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    clients::set_user_code(&state, &auth.0.id, &user_id, &body.user_code).await?;
    Ok(StatusCode::NO_CONTENT)
}
