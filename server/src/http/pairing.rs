//! Pairing: codes for the customer, direct pairing for the device, relay pairing for the
//! customer's backend. The rules are in [`crate::domain::pairing`].

use super::extract::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::api::{
    DevicePairingRequest, DevicePairingResponse, RelayPairingRequest, RelayPairingResponse,
    StartPairingRequest, StartPairingResponse,
};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, ClientAddr, OptionalJson, parse_user_id};
use crate::domain::{Ctx, pairing};

/// Starts a pairing for a user: a single-use code and a URI for a QR code.
#[utoipa::path(post, path = "/v1/users/{user_id}/pairings", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body(content = StartPairingRequest, description = "Optional"),
    responses((status = 201, body = StartPairingResponse), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn start_pairing(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    OptionalJson(body): OptionalJson<StartPairingRequest>,
) -> Result<(StatusCode, Json<StartPairingResponse>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let started = pairing::start(&state, &auth.0.id, &user_id, body.ttl_seconds).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// A device pairs with a code.
#[utoipa::path(post, path = "/v1/device/pairings", tag = "device", request_body = DevicePairingRequest,
    responses((status = 201, body = DevicePairingResponse),
              (status = 400, description = "invalid_pairing_code, invalid_signature, invalid_registration, invalid_public_key, audience_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "replayed_message", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "rate_limited", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn device_pairing(
    State(state): State<Ctx>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<DevicePairingRequest>,
) -> Result<(StatusCode, Json<DevicePairingResponse>), ApiError> {
    let paired = pairing::pair_device(&state, &client, &body).await?;
    Ok((StatusCode::CREATED, Json(paired)))
}

/// The customer's backend completes a relay pairing with the app's mobile payload.
#[utoipa::path(post, path = "/v1/users/{user_id}/relay-pairings", tag = "customer",
    params(("user_id" = tessera_protocol::ids::UserId, Path, description = "The customer's id for the user")),
    request_body = RelayPairingRequest,
    responses((status = 201, body = RelayPairingResponse),
              (status = 400, description = "invalid_mobile_payload, invalid_public_key, audience_mismatch, stale_message", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "replayed_message", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn relay_pairing(
    State(state): State<Ctx>,
    auth: AppAuth,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<RelayPairingRequest>,
) -> Result<(StatusCode, Json<RelayPairingResponse>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    let paired = pairing::relay(&state, &auth.0, &user_id, &body).await?;
    Ok((StatusCode::CREATED, Json(paired)))
}
