//! Authentication flows: start one, read where it stands, apply an action, read its history
//! (the PingFederate Authentication API model; the rules are in `domain::flows`).

use super::extract::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tessera_protocol::flows::{CreateFlowRequest, FlowAction, FlowHistory, FlowState};

use super::errors::ApiError;
use super::extract::{ApiJson, ApiKey, AppAuth, parsed_or_refused};
use crate::domain::{Ctx, flows};

/// Starts a flow for a user the customer's first factor authenticated, or (`passkey`, no
/// `user_id`) a passkey sign-in without a user name.
#[utoipa::path(post, path = "/v1/flows", tag = "customer",
    request_body = CreateFlowRequest,
    responses((status = 201, body = FlowState),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 403, description = "passkeys_not_enabled", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_flow(
    State(ctx): State<Ctx>,
    ApiKey(key): ApiKey,
    body: Result<ApiJson<CreateFlowRequest>, ApiError>,
) -> Result<(StatusCode, Json<FlowState>), ApiError> {
    let ApiJson(body) = parsed_or_refused(&ctx, &key, body).await?;
    let state = flows::create_by_key(&ctx, &key, body).await?;
    Ok((StatusCode::CREATED, Json(state)))
}

/// Where a flow stands, with the actions allowed now.
#[utoipa::path(get, path = "/v1/flows/{flow_id}", tag = "customer",
    params(("flow_id" = tessera_protocol::ids::FlowId, Path, description = "The flow")),
    responses((status = 200, body = FlowState),
              (status = 404, description = "flow_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_flow(
    State(ctx): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FlowState>, ApiError> {
    Ok(Json(flows::get_by_key(&ctx, &key, &id).await?))
}

/// Applies one action (`{"action": "selectDevice", "device_id": …}`) and answers the flow as it
/// stands after it.
#[utoipa::path(post, path = "/v1/flows/{flow_id}", tag = "customer",
    params(("flow_id" = tessera_protocol::ids::FlowId, Path, description = "The flow")),
    request_body = FlowAction,
    responses((status = 200, body = FlowState),
              (status = 400, description = "invalid_request, otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "flow_not_found, device_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "action_not_allowed (with allowed_actions), conflict", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "flow_expired", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "too_many_authentications", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn act_on_flow(
    State(ctx): State<Ctx>,
    ApiKey(key): ApiKey,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<FlowAction>, ApiError>,
) -> Result<Json<FlowState>, ApiError> {
    let ApiJson(action) = parsed_or_refused(&ctx, &key, body).await?;
    Ok(Json(flows::act_by_key(&ctx, &key, &id, action).await?))
}

/// Every action applied to the flow, oldest first (transitions and refused attempts).
#[utoipa::path(get, path = "/v1/flows/{flow_id}/events", tag = "customer",
    params(("flow_id" = tessera_protocol::ids::FlowId, Path, description = "The flow")),
    responses((status = 200, body = FlowHistory),
              (status = 404, description = "flow_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn flow_events(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FlowHistory>, ApiError> {
    Ok(Json(flows::history(&ctx, &auth.0.id, &id).await?))
}
