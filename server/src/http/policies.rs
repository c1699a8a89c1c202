//! Customer API: the application's authentication policy (versioned), a dry run, and users'
//! groups. The rules are in [`crate::domain::policy`]; the language is in `docs/policy.md`.

use axum::Json;
use axum::extract::{Path, State};
use tessera_protocol::policy::{
    EvaluatePolicyRequest, PolicyDocument, PolicyEvaluation, PolicyVersion, PolicyVersionList,
    UserGroups,
};

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth, parse_user_id};
use crate::domain::{Ctx, policy};

/// Saves a new version of the application's policy (every version is kept). An invalid policy
/// is refused with the offending rule named, and nothing is saved.
#[utoipa::path(put, path = "/v1/policies", tag = "customer", request_body = PolicyDocument,
    security(("api_key" = [])),
    responses((status = 200, body = PolicyVersion),
              (status = 400, description = "invalid_request: names the rule at fault", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn save_policy(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<PolicyDocument>,
) -> Result<Json<PolicyVersion>, ApiError> {
    Ok(Json(policy::save(&ctx, &auth.0.id, &body).await?))
}

/// The application's current policy.
#[utoipa::path(get, path = "/v1/policies", tag = "customer",
    security(("api_key" = [])),
    responses((status = 200, body = PolicyVersion),
              (status = 404, description = "not_found: no policy", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn current_policy(
    State(ctx): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<PolicyVersion>, ApiError> {
    Ok(Json(policy::current(&ctx, &auth.0.id).await?))
}

/// Every version of the application's policy, oldest first.
#[utoipa::path(get, path = "/v1/policies/versions", tag = "customer",
    security(("api_key" = [])),
    responses((status = 200, body = PolicyVersionList)))]
pub(crate) async fn policy_versions(
    State(ctx): State<Ctx>,
    auth: AppAuth,
) -> Result<Json<PolicyVersionList>, ApiError> {
    Ok(Json(policy::versions(&ctx, &auth.0.id).await?))
}

/// A dry run: what the policy would decide for the given facts, and the values it looked at.
/// Nothing is sent to anyone and nothing is recorded.
#[utoipa::path(post, path = "/v1/policies/evaluate", tag = "customer",
    request_body = EvaluatePolicyRequest, security(("api_key" = [])),
    responses((status = 200, body = PolicyEvaluation),
              (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn evaluate_policy(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    ApiJson(body): ApiJson<EvaluatePolicyRequest>,
) -> Result<Json<PolicyEvaluation>, ApiError> {
    Ok(Json(policy::evaluate(&ctx, &auth.0.id, &body).await?))
}

/// Replaces the user's groups (policies match on them).
#[utoipa::path(put, path = "/v1/users/{user_id}/groups", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = UserGroups, security(("api_key" = [])),
    responses((status = 200, body = UserGroups), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_groups(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<UserGroups>,
) -> Result<Json<UserGroups>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(
        policy::set_groups(&ctx, &auth.0.id, &user_id, &body).await?,
    ))
}

/// The user's groups.
#[utoipa::path(get, path = "/v1/users/{user_id}/groups", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    security(("api_key" = [])),
    responses((status = 200, body = UserGroups), (status = 404, body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_groups(
    State(ctx): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<Json<UserGroups>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    Ok(Json(policy::groups(&ctx, &auth.0.id, &user_id).await?))
}
