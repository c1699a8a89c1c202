//! Health, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::json;
use tessera_protocol::error::ErrorCode;

use super::errors::ApiError;
use crate::domain::Ctx;

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The server and its database answer: `{\"status\": \"ok\"}`", body = Object),
              (status = 503, description = "The database does not answer", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn healthz(State(state): State<Ctx>) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .db
        .ping()
        .await
        .map_err(|_| ApiError::new(ErrorCode::ServiceUnavailable, "the database is unavailable"))?;
    Ok(Json(json!({"status": "ok"})))
}

/// The answer of `/livez` and `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Probe {
    /// `ok`, or `not_ready`.
    status: &'static str,
    /// Why not ready: `database_unavailable` or `migrations_pending`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// The reason in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Liveness: the process is up and serving (the database is not consulted: restarting the
/// process would not bring a database back).
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "The process serves requests", body = Probe)))]
pub(crate) async fn livez() -> Json<Probe> {
    Json(Probe {
        status: "ok",
        reason: None,
        message: None,
    })
}

/// Readiness: the database answers and its migrations are current; otherwise 503 with the
/// reason, so a load balancer sends traffic elsewhere.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready for traffic", body = Probe),
              (status = 503, description = "Not ready: `reason` says why", body = Probe)))]
pub(crate) async fn readyz(State(state): State<Ctx>) -> (StatusCode, Json<Probe>) {
    match crate::domain::readiness::check(&state).await {
        Ok(()) => (
            StatusCode::OK,
            Json(Probe {
                status: "ok",
                reason: None,
                message: None,
            }),
        ),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                status: "not_ready",
                reason: Some(not_ready.reason()),
                message: Some(not_ready.to_string()),
            }),
        ),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics, OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(state): State<Ctx>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            state
                .metrics
                .waiting_topics
                .set(i64::try_from(state.events.waited_topics()).unwrap_or(i64::MAX));
            state.metrics.render()
        },
    )
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi_document",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi_document())
}
