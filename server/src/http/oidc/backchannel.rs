//! `POST /oidc/backchannel`: the backchannel authentication endpoint (CIBA Core §7).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{form_and_credentials, uncached};
use crate::domain::Ctx;
use crate::domain::ciba::{OAuthError, backchannel};

/// `POST /oidc/backchannel`: a relying party asks for a user; the answer is the
/// acknowledgement with the `auth_req_id`.
#[utoipa::path(post, path = "/oidc/backchannel", tag = "openid",
    operation_id = "oidc_backchannel_authentication",
    security(("client_basic" = []), ("client_form" = [])),
    request_body(content = super::BackchannelForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = tessera_protocol::ciba::BackchannelAcknowledgement),
              (status = 400, description = "invalid_request, invalid_scope, unknown_user_id, missing_user_code, invalid_user_code, invalid_binding_message, expired_login_hint_token", body = tessera_protocol::ciba::OAuthErrorResponse),
              (status = 401, description = "invalid_client", body = tessera_protocol::ciba::OAuthErrorResponse),
              (status = 403, description = "access_denied", body = tessera_protocol::ciba::OAuthErrorResponse)))]
pub(crate) async fn backchannel_authentication(
    State(state): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (form, basic) = form_and_credentials(&headers, &body)?;
    let acknowledgement = backchannel::authenticate(&state, basic, &form).await?;
    Ok(uncached(acknowledgement))
}
