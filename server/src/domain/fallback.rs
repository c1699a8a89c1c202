//! Fallback to the user's other devices. An authentication created without naming a device goes
//! to the user's primary device; when the push to it cannot be delivered (refused, failed after
//! its retries, or the token is no longer valid), the request is re-addressed to the user's next
//! active device — re-signed for that enrollment with a fresh nonce, the same parameters, number
//! choices and expiry — and pushed there. A device reached only by pulling (no push provider) is
//! not a failure: it fetches the request itself. Re-addressing is one conditional update on a
//! pending request still addressed to the device that failed, so an answer that arrived meanwhile
//! wins and nothing is moved.
//!
//! When no device can be reached (the last push undelivered) and the authentication has OTP
//! fallback, a one-time passcode is accepted for it from then on.

use tessera_protocol::api::EnrollmentState;
use tessera_protocol::authentication::AuthenticationRequest;
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::DeviceRegistration;

use crate::domain::Ctx;
use crate::store::applications::SealedPushSettings;
use crate::store::authentications::{self, Authentication, Readdressed};
use crate::store::enrollments::{self, Enrollment};

/// Push outcomes after which another device is tried.
fn undelivered(outcome: &str) -> bool {
    !matches!(outcome, "sent" | "none")
}

/// Delivers the push for a new authentication, through the application's push `settings` the
/// request read with its others; with `fall_back`, moves it to the user's other devices in turn
/// while pushes cannot be delivered.
pub(crate) async fn deliver(
    state: Ctx,
    record: Authentication,
    device: Enrollment,
    fall_back: bool,
    settings: SealedPushSettings,
) {
    let (mut record, mut device) = (record, device);
    let mut tried: Vec<EnrollmentId> = Vec::new();
    loop {
        let outcome = state
            .device_push
            .push(
                state.clone(),
                record.clone(),
                device.clone(),
                Some(settings.clone()),
            )
            .await;
        let Some(outcome) = outcome.filter(|o| undelivered(o)) else {
            return;
        };
        if !fall_back {
            offer_passcode(&state, &record).await;
            return;
        }
        tried.push(device.enrollment_id.clone());
        match readdress(&state, &record, &device, &tried).await {
            Ok(Some((moved, next))) => {
                tracing::info!(
                    authentication_id = %moved.id,
                    from = %device.enrollment_id,
                    to = %next.enrollment_id,
                    %outcome,
                    "push undelivered; the request falls back to the user's next device"
                );
                record = moved;
                device = next;
            }
            Ok(None) => {
                offer_passcode(&state, &record).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fallback: could not re-address the request");
                return;
            }
        }
    }
}

/// No device can be reached: with OTP fallback, a passcode is accepted from now on.
async fn offer_passcode(state: &Ctx, record: &Authentication) {
    if record.otp_mode != authentications::OtpMode::Fallback {
        return;
    }
    let now = state.now();
    match authentications::offer_passcode_now(&state.db, &record.id, now).await {
        Ok(()) => tracing::info!(
            authentication_id = %record.id,
            "push undelivered to every device; OTP fallback in force"
        ),
        Err(e) => tracing::warn!(error = %e, "fallback: could not put OTP fallback in force"),
    }
}

/// Re-addresses a pending request from `from` to the user's next active device not yet tried
/// (the primary first, then by pairing time). `None` when there is no such device, or the
/// request is no longer pending for `from`. A device unpaired between its choice and the move
/// is not moved to (`Readdressed::DeviceGone`): the next one is tried.
async fn readdress(
    state: &Ctx,
    record: &Authentication,
    from: &Enrollment,
    tried: &[EnrollmentId],
) -> Result<Option<(Authentication, Enrollment)>, super::DomainError> {
    let mut devices: Vec<Enrollment> =
        enrollments::list_for_user(&state.db, &record.application_id, &record.user_id)
            .await?
            .into_iter()
            .filter(|d| d.status == EnrollmentState::Active && !tried.contains(&d.enrollment_id))
            .collect();
    devices.sort_by_key(|d| (!d.is_primary, d.paired_at));
    if devices.is_empty() {
        return Ok(None);
    }
    // The request as this server signed it (read back from its own database).
    let signed: AuthenticationRequest = envelope::unverified_payload(&record.signed_request)
        .map_err(|_| super::DomainError::Internal("a stored signed request is unreadable"))?;
    for next in devices {
        let mut request = signed.clone();
        request.enrollment_id = next.enrollment_id.clone();
        request.nonce = DeviceRegistration::new_nonce();
        request.issued_at = state.now();
        let signed_request = state
            .keys
            .sign(MessageType::AuthenticationRequest, &request)
            .map_err(|_| super::DomainError::Internal("signing with the server key failed"))?;
        let moved = authentications::readdress(
            &state.db,
            &record.id,
            &from.enrollment_id,
            &next.enrollment_id,
            &signed_request,
            &request.nonce,
        )
        .await?;
        match moved {
            Readdressed::Moved => {
                let moved = Authentication {
                    enrollment_id: next.enrollment_id.clone(),
                    signed_request,
                    nonce: request.nonce,
                    ..record.clone()
                };
                return Ok(Some((moved, next)));
            }
            Readdressed::NotPendingThere => return Ok(None),
            Readdressed::DeviceGone => {}
        }
    }
    Ok(None)
}
