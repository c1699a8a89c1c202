//! Customer API: event webhooks (register, list, remove, deliveries), the audit log (query and
//! JSON-lines export) and a user's authentication history. The rules are in
//! [`crate::domain::webhooks`] and [`crate::domain::audit`].

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tessera_protocol::events::{
    AuditPage, AuthenticationHistory, CreateWebhookEndpoint, CreatedWebhookEndpoint,
    WebhookDeliveryList, WebhookEndpointList,
};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, parse_user_id};
use crate::domain::{Ctx, DomainError, audit, webhooks};

/// Registers a webhook endpoint. The answer carries its signing secret, shown this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "customer", request_body = CreateWebhookEndpoint,
    security(("api_key" = [])),
    responses((status = 201, body = CreatedWebhookEndpoint),
              (status = 400, description = "invalid_request (URL refused by the outbound-call policy, too many endpoints)", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_webhook(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<CreateWebhookEndpoint>,
) -> Result<(StatusCode, Json<CreatedWebhookEndpoint>), ApiError> {
    let created = webhooks::create_endpoint(&ctx, &auth.0.id, &body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The application's webhook endpoints (without their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "customer", security(("api_key" = [])),
    responses((status = 200, body = WebhookEndpointList)))]
pub(crate) async fn list_webhooks(
    State(ctx): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<WebhookEndpointList>, ApiError> {
    Ok(Json(webhooks::list_endpoints(&ctx, &auth.0.id).await?))
}

/// Removes a webhook endpoint and its queued deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{endpoint_id}", tag = "customer", security(("api_key" = [])),
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    responses((status = 204, description = "Removed"), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn remove_webhook(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Path(endpoint_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    webhooks::remove_endpoint(&ctx, &auth.0.id, &endpoint_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Most records one page may ask for.
const MAX_PAGE_LIMIT: u32 = 200;

/// A page size as asked: 1 to [`MAX_PAGE_LIMIT`], refused otherwise (never silently cut).
fn page_limit(limit: Option<u32>) -> Result<Option<u32>, ApiError> {
    match limit {
        Some(n) if n == 0 || n > MAX_PAGE_LIMIT => {
            Err(DomainError::invalid(format!("limit must be 1 to {MAX_PAGE_LIMIT}")).into())
        }
        other => Ok(other),
    }
}

/// `?limit=N` (at most 200).
#[derive(Debug, serde::Deserialize, Default, utoipa::IntoParams)]
pub(crate) struct LimitQuery {
    /// How many, 1 to 200 (default 50); another number is refused.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// An endpoint's latest deliveries: state, attempts, last status and last error.
#[utoipa::path(get, path = "/v1/webhooks/{endpoint_id}/deliveries", tag = "customer", security(("api_key" = [])),
    params(("endpoint_id" = String, Path, description = "The endpoint"), LimitQuery),
    responses((status = 200, body = WebhookDeliveryList), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn webhook_deliveries(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Path(endpoint_id): Path<String>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    Ok(Json(
        webhooks::deliveries(&ctx, &auth.0.id, &endpoint_id, page_limit(query.limit)?).await?,
    ))
}

/// Filters of the audit log.
#[derive(Debug, serde::Deserialize, Default, utoipa::IntoParams)]
pub(crate) struct AuditQuery {
    /// Only this user's records.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Only records of this kind (`authentication.approved`, `user.deleted`, …).
    #[serde(default)]
    pub kind: Option<String>,
    /// Only records at or after this time (ms since the epoch).
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// Only records before this time (ms since the epoch).
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// How many, 1 to 200 (default 50); another number is refused.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

impl AuditQuery {
    fn into_domain(self) -> Result<audit::Query, ApiError> {
        Ok(audit::Query {
            user_id: self.user_id,
            kind: self.kind,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            cursor: self.cursor,
            limit: page_limit(self.limit)?,
        })
    }
}

/// The application's audit log, newest first, filtered, with a cursor for the next page.
#[utoipa::path(get, path = "/v1/audit", tag = "customer", security(("api_key" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditPage),
              (status = 400, description = "invalid_request (a bad cursor)", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn audit_page(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(
        audit::page(&ctx, &auth.0.id, &query.into_domain()?).await?,
    ))
}

/// The application's audit log as JSON lines (`application/x-ndjson`), oldest first, streamed.
/// An export the database fails midway is aborted (the body does not end cleanly); one it
/// fails before the first record is answered like any other outage.
#[utoipa::path(get, path = "/v1/audit/export", tag = "customer", security(("api_key" = [])),
    params(AuditQuery),
    responses((status = 200, description = "One audit record (JSON) per line; aborted, never ended cleanly, if the export fails midway", content_type = "application/x-ndjson", body = String),
              (status = 400, description = "invalid_request (a bad limit)", body = tessera_protocol::error::ErrorBody),
              (status = 503, description = "service_unavailable (the database is unavailable)", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn audit_export(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let batches = audit::export_stream(&ctx, &auth.0.id, &query.into_domain()?).await?;
    // An export that fails midway ends the stream with its error: the chunked body is then
    // aborted, never ended as if it were complete.
    let stream = futures_util::stream::unfold(batches, |mut batches| async move {
        batches.recv().await.map(|batch| (batch, batches))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `?cursor=…&limit=N`.
#[derive(Debug, serde::Deserialize, Default, utoipa::IntoParams)]
pub(crate) struct HistoryQuery {
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// How many, 1 to 200 (default 50); another number is refused.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// The user's authentications, newest first, with a cursor for the next page.
#[utoipa::path(get, path = "/v1/users/{user_id}/authentications", tag = "customer", security(("api_key" = [])),
    params(("user_id" = String, Path, description = "The customer's id for the user"), HistoryQuery),
    responses((status = 200, body = AuthenticationHistory),
              (status = 400, description = "invalid_request (a bad cursor)", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn authentication_history(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<AuthenticationHistory>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        audit::authentication_history(
            &ctx,
            &auth.0.id,
            &user_id,
            query.cursor.as_deref(),
            page_limit(query.limit)?,
        )
        .await?,
    ))
}
