//! Health, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
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
