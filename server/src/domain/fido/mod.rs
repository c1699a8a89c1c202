//! FIDO2 / WebAuthn: the server as a relying party for roaming security keys
//! (`SECURITY_KEY`), platform authenticators (`PLATFORM`) and user-verified platform
//! authenticators (`FIDO2_BIOMETRICS`), on the `webauthn-rs` project's verification core (no
//! hand-written CBOR or COSE verification). See `docs/fido.md`.
//!
//! - [`settings`]: an application's relying party (RP id, origins, user verification,
//!   attestation with an AAGUID allow-list, discoverable credentials).
//! - [`registration`] and [`authentication`]: the two ceremonies. Their state is stored as a
//!   ceremony bound to the application, flow and user, short-lived, and taken once (deleted by
//!   the response that answers it), so a replayed response finds nothing; an answer in another
//!   user's (or application's) name takes nothing and leaves the ceremony to its own user.
//! - [`kind`]: what type a credential is and which `amr` an assertion earns.
//! - [`credentials`]: the customer API's list, rename and remove.

pub(crate) mod authentication;
pub(crate) mod credentials;
pub(crate) mod kind;
pub(crate) mod registration;
pub(crate) mod settings;

#[cfg(test)]
mod flow_tests;

use std::time::Duration;

use tessera_protocol::error::ErrorCode;
use tessera_protocol::fido::FidoSettings;
use tessera_protocol::ids::{ApplicationId, UserId};
use webauthn_rs_core::WebauthnCore;

use super::{Ctx, DomainError};

/// How long a ceremony may take, in seconds (the browser's timeout and the stored state's
/// lifetime).
pub(crate) const CEREMONY_SECONDS: i64 = 120;

/// A ceremony response that does not verify.
pub(crate) fn verification_failed(message: impl Into<String>) -> DomainError {
    DomainError::new(ErrorCode::FidoVerificationFailed, message)
}

/// The relying party an application's settings describe.
pub(crate) fn relying_party(
    ctx: &Ctx,
    app_name: &str,
    settings: &FidoSettings,
) -> Result<WebauthnCore, DomainError> {
    let own = url::Url::parse(ctx.public_url.as_str())
        .map_err(|_| DomainError::Internal("the server's public URL does not parse"))?;
    let rp_id = match &settings.rp_id {
        Some(id) => id.clone(),
        None => own
            .host_str()
            .ok_or(DomainError::Internal("the server's public URL has no host"))?
            .to_string(),
    };
    let origins = if settings.allowed_origins.is_empty() {
        vec![own]
    } else {
        settings
            .allowed_origins
            .iter()
            .map(|o| url::Url::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| DomainError::Internal("stored FIDO origins do not parse"))?
    };
    let name = if app_name.is_empty() {
        "Tessera"
    } else {
        app_name
    };
    Ok(WebauthnCore::new_unsafe_experts_only(
        name,
        &rp_id,
        origins,
        Duration::from_secs(CEREMONY_SECONDS as u64),
        Some(false),
        Some(false),
    ))
}

/// The WebAuthn user handle of a user: a digest of the application and the user id, so the
/// authenticator never holds the customer's id, and a discoverable credential's handle names
/// its user within its application only.
pub(crate) fn user_handle(app: &ApplicationId, user: &UserId) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"tessera fido user handle\0");
    h.update(app.as_str().as_bytes());
    h.update(b"\0");
    h.update(user.as_str().as_bytes());
    h.finalize().to_vec()
}

/// A refused ceremony: recorded in the audit log (`fido.refused`), answered as
/// `fido_verification_failed` with `message`.
pub(crate) async fn refuse(
    ctx: &Ctx,
    app: &crate::store::applications::Application,
    user: &UserId,
    ceremony: &'static str,
    message: String,
) -> DomainError {
    let event = super::audit::Event::new("fido.refused", super::audit::Actor::Anonymous, "refused")
        .app(app.id.as_str())
        .user(user.as_str())
        .details(serde_json::json!({ "ceremony": ceremony, "message": message }));
    super::audit::record(ctx, event).await;
    tracing::info!(ceremony, message, "FIDO ceremony refused");
    verification_failed(message)
}

/// Why the WebAuthn library refused a response, in words for the caller (no key material).
pub(crate) fn describe(e: &webauthn_rs_core::error::WebauthnError) -> String {
    use webauthn_rs_core::error::WebauthnError as W;
    match e {
        W::InvalidRPOrigin => "it comes from an origin this application does not allow".into(),
        W::MismatchedChallenge => "it answers another challenge".into(),
        W::InvalidRPIDHash => "it is for another relying party".into(),
        W::UserNotVerified => "the authenticator did not verify the user".into(),
        W::CredentialNotFound => "the credential is not one of this user's".into(),
        W::CredentialPossibleCompromise => "the signature counter went backwards".into(),
        other => other.to_string(),
    }
}
