//! The hosted prompt's API (`/v1/flow-browser`): the page at `/prompt#<browser token>` reads its
//! flow and applies actions with the token in an `Authorization: Bearer` header, nothing else
//! (no API key). Writes are refused from other sites; answers are never cached. The rules are in
//! `domain::hosted`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT_LANGUAGE, AUTHORIZATION, CACHE_CONTROL, ORIGIN};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tessera_protocol::flows::{FlowAction, FlowBrowserState};

use super::errors::ApiError;
use super::extract::ApiJson;
use crate::domain::Ctx;
use crate::domain::hosted::{self, BrowserCaller};

/// `?wait=SECONDS&seen=VERSION`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
pub(crate) struct FlowBrowserQuery {
    /// Seconds to wait for the flow to move (at most 30).
    #[serde(default)]
    pub wait: Option<u64>,
    /// The version the page shows; the answer waits for another.
    #[serde(default)]
    pub seen: Option<i64>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the request carries for the domain: the bearer token and the headers it judges.
fn caller(headers: &HeaderMap) -> BrowserCaller<'_> {
    BrowserCaller {
        token: headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim),
        origin: header(headers, ORIGIN.as_str()),
        fetch_site: header(headers, "sec-fetch-site"),
        accept_language: header(headers, ACCEPT_LANGUAGE.as_str()),
    }
}

fn no_store(state: FlowBrowserState) -> Response {
    ([(CACHE_CONTROL, "no-store")], Json(state)).into_response()
}

/// The hosted prompt's flow as the page shows it (`Authorization: Bearer <browser token>`);
/// `?wait=N&seen=V` holds the answer while the flow is still at version V (at most 30
/// seconds, woken by the flow's own events).
#[utoipa::path(get, path = "/v1/flow-browser", tag = "browser",
    operation_id = "flow_browser_state", security(("prompt_token" = [])),
    params(FlowBrowserQuery),
    responses((status = 200, body = FlowBrowserState),
              (status = 401, description = "unauthorized", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_flow(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(query): Query<FlowBrowserQuery>,
) -> Result<Response, ApiError> {
    let wait = std::time::Duration::from_secs(query.wait.unwrap_or(0));
    let state = hosted::view(&ctx, caller(&headers), query.seen, wait).await?;
    Ok(no_store(state))
}

/// Applies one action from the page (`{"action": "checkOtp", "otp": …}`: the actions and errors
/// of `POST /v1/flows/{id}`), only from the page's own origin.
#[utoipa::path(post, path = "/v1/flow-browser", tag = "browser",
    operation_id = "flow_browser_action", security(("prompt_token" = [])),
    request_body = FlowAction,
    responses((status = 200, body = FlowBrowserState),
              (status = 400, description = "invalid_request, otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 401, description = "unauthorized", body = tessera_protocol::error::ErrorBody),
              (status = 403, description = "cross_origin_refused", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "action_not_allowed, conflict", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "flow_expired", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn act_on_flow(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    ApiJson(action): ApiJson<FlowAction>,
) -> Result<Response, ApiError> {
    let state = hosted::act(&ctx, caller(&headers), action).await?;
    Ok(no_store(state))
}
