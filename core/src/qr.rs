//! QR login on the device: checking the server-signed session context after a scan, and the
//! answer the chosen user signs.

use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::authentication::{AccessContext, Decision, DeviceLocation};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, EnvelopeError, MessageType};
use tessera_protocol::ids::{DeviceId, EnrollmentId, UserId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{ApplicationInfo, DeviceSignals, ServerUrl};
use tessera_protocol::qr::{QrResponse, QrSessionContext, QrSessionId};
use tessera_protocol::time::UnixSeconds;

use crate::error::CoreError;

/// One of this device's users who may answer a scanned QR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrUser {
    /// The user.
    pub user_id: UserId,
    /// A name to show, if the customer gave one.
    pub display_name: Option<String>,
    /// The user's enrollment on this device.
    pub enrollment_id: EnrollmentId,
}

/// A scanned QR login, checked: what to show, and who may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrAuthentication {
    /// The session.
    pub session_id: QrSessionId,
    /// The server.
    pub server: ServerUrl,
    /// The application the sign-in is for.
    pub application: ApplicationInfo,
    /// Where the sign-in comes from (the browser's IP and location text).
    pub context: AccessContext,
    /// This device's users who may answer: one to confirm, or several to choose from.
    pub users: Vec<QrUser>,
    /// When the session expires.
    pub expires_at: UnixSeconds,
    pub(crate) nonce: String,
    pub(crate) context_digest: Sha256Digest,
}

/// Checks a signed session context: a key pinned for the server, the session asked for, this
/// device, only enrollments this device holds for that server, and not expired.
pub(crate) fn verify_context(
    signed: &str,
    server: &ServerUrl,
    pinned: &JwkSet,
    device_id: &DeviceId,
    held: &[(EnrollmentId, UserId)],
    now: UnixSeconds,
) -> Result<QrAuthentication, CoreError> {
    let context = envelope::verify_with_set::<QrSessionContext>(
        signed,
        MessageType::QrSessionContext,
        pinned,
    )
    .map_err(|e| match e {
        EnvelopeError::UnknownKey | EnvelopeError::BadSignature => CoreError::UntrustedServerKey,
        _ => CoreError::InvalidServerResponse("the QR session context is malformed".into()),
    })?
    .payload;
    if context.v != PROTOCOL_VERSION {
        return Err(CoreError::ReplyMismatch("unsupported protocol version"));
    }
    if &context.issuer != server {
        return Err(CoreError::ReplyMismatch("issued by another server"));
    }
    if &context.device_id != device_id {
        return Err(CoreError::ReplyMismatch("meant for another device"));
    }
    if context.candidates.is_empty()
        || !context.candidates.iter().all(|c| {
            held.iter()
                .any(|(e, u)| e == &c.enrollment_id && u == &c.user_id)
        })
    {
        return Err(CoreError::ReplyMismatch(
            "names users this device is not paired for",
        ));
    }
    if now >= context.expires_at {
        return Err(CoreError::RequestExpired);
    }
    let context_digest = Sha256Digest::of_canonical(&context.context)
        .map_err(|_| CoreError::InvalidServerResponse("the context cannot be encoded".into()))?;
    Ok(QrAuthentication {
        session_id: context.session_id,
        server: server.clone(),
        application: context.application,
        context: context.context,
        users: context
            .candidates
            .into_iter()
            .map(|c| QrUser {
                user_id: c.user_id,
                display_name: c.display_name,
                enrollment_id: c.enrollment_id,
            })
            .collect(),
        expires_at: context.expires_at,
        nonce: context.nonce,
        context_digest,
    })
}

/// The answer the chosen user signs.
pub(crate) fn response_for(
    qr: &QrAuthentication,
    enrollment_id: &EnrollmentId,
    decision: Decision,
    amr: Vec<String>,
    signals: DeviceSignals,
    location: Option<DeviceLocation>,
    now: UnixSeconds,
) -> QrResponse {
    QrResponse {
        v: PROTOCOL_VERSION,
        session_id: qr.session_id.clone(),
        enrollment_id: enrollment_id.clone(),
        session_nonce: qr.nonce.clone(),
        decision,
        context_digest: qr.context_digest,
        amr: if decision == Decision::Approve {
            amr
        } else {
            Vec::new()
        },
        signals,
        location,
        device: None,
        issued_at: now,
        app_attest_assertion: None,
    }
}
