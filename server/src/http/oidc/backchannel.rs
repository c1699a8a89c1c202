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
pub(crate) async fn backchannel_authentication(
    State(state): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (form, basic) = form_and_credentials(&headers, &body)?;
    let acknowledgement = backchannel::authenticate(&state, basic, &form).await?;
    Ok(uncached(acknowledgement))
}
