//! "Verify new devices with the primary device": under that application policy a user's further
//! device pairs in state `pending_verification`, and an approval request goes to the user's
//! primary device. Approved, the new enrollment becomes active (replacing the same device's
//! earlier enrollment, if any); denied, expired or failed, it is rejected for good.
//!
//! The outcome is applied when the primary device answers, and again lazily wherever a pending
//! enrollment is read (its status, the user's device list), so a crash between the two writes,
//! or an expiry nobody answered, still settles.

use tessera_protocol::api::EnrollmentState;
use tessera_protocol::authentication::{
    AccessContext, AuthenticationKind, AuthenticationState, DisplayField, DynamicParameters,
};
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::pairing::DeviceRegistration;

use super::authentication::Question;
use super::events::Topic;
use super::{Ctx, DomainError};
use crate::i18n::Arg;
use crate::store::applications::{self, AdditionalDevicePolicy};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};

/// The device that must approve a new device of this user, if the application's policy asks
/// for one and the user has an active primary device.
pub(crate) async fn verifier(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<Enrollment>, DomainError> {
    let policy = applications::additional_device_policy(&mut *conn, app).await?;
    if policy != AdditionalDevicePolicy::VerifyWithPrimary {
        return Ok(None);
    }
    Ok(enrollments::primary(conn, app, user).await?)
}

/// What the server itself knows about a registration it asks the primary device about: the
/// prompt is phrased from these, never from what the new device says of itself alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerificationFacts {
    /// How many active devices the user has now.
    pub active_devices: usize,
    /// The user's active enrollment that proved the same device key, if any: the same device
    /// pairing again, which approval replaces.
    pub same_device: Option<SameDevice>,
}

/// The user's earlier enrollment of the device that is pairing again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SameDevice {
    /// Whether it is the device being asked (the primary device pairing itself again).
    pub is_asked_device: bool,
    /// How it described itself when it paired.
    pub label: String,
}

/// Gathers the [`VerificationFacts`] inside the pairing transaction: `primary` is the device
/// that will be asked, `device_key_thumbprint` the key the new registration proved.
pub(crate) async fn facts(
    conn: &mut crate::store::WriteConn<'_>,
    app: &ApplicationId,
    user: &UserId,
    primary: &Enrollment,
    device_key_thumbprint: &str,
) -> Result<VerificationFacts, DomainError> {
    let active = enrollments::active_for_user(conn, app, user).await?;
    let same_device = active
        .iter()
        .find(|e| e.device_key_thumbprint.as_deref() == Some(device_key_thumbprint))
        .map(|e| SameDevice {
            is_asked_device: e.enrollment_id == primary.enrollment_id,
            label: device_label(&e.device_info),
        });
    Ok(VerificationFacts {
        active_devices: active.len(),
        same_device,
    })
}

/// How a device is named in a prompt: the name it gave itself, else its model.
fn device_label(info: &tessera_protocol::pairing::DeviceInfo) -> String {
    info.name.clone().unwrap_or_else(|| info.model.clone())
}

/// The prompt's headline in the shipped language for `wanted`: what approving will do, from the
/// server's facts. The new device's own description is only the label, always marked `(new)`
/// unless the server saw the same device key before, so a device cannot pass itself off as one
/// the user already has. Returns the headline and its language.
pub(crate) fn verification_message(
    registration: &DeviceRegistration,
    facts: &VerificationFacts,
    wanted: &[String],
) -> Result<(String, String), DomainError> {
    match &facts.same_device {
        Some(same) if same.is_asked_device => {
            super::users::localized(wanted, "pair-this-device-again", &[])
        }
        Some(same) => super::users::localized(
            wanted,
            "pair-device-again",
            &[("device", Arg::Text(&same.label))],
        ),
        None => super::users::localized(
            wanted,
            "add-device",
            &[
                ("device", Arg::Text(&device_label(&registration.device))),
                (
                    "count",
                    Arg::Number(i64::try_from(facts.active_devices + 1).unwrap_or(i64::MAX)),
                ),
            ],
        ),
    }
}

/// The question the primary device is asked about a new device, in the shipped language for
/// `wanted` (the user's preferred language; English when none fits).
pub(crate) fn question(
    ctx: &Ctx,
    application_name: &str,
    registration: &DeviceRegistration,
    facts: &VerificationFacts,
    client_ip: Option<&str>,
    wanted: &[String],
) -> Result<Question, DomainError> {
    let (message, lang) = verification_message(registration, facts, wanted)?;
    let label = |id: &str| {
        super::users::localized(std::slice::from_ref(&lang), id, &[]).map(|(text, _)| text)
    };
    let d = &registration.device;
    let mut fields = vec![DisplayField {
        label: label("field-device")?,
        value: device_label(d),
    }];
    if d.name.is_some() {
        fields.push(DisplayField {
            label: label("field-model")?,
            value: d.model.clone(),
        });
    }
    fields.push(DisplayField {
        label: label("field-system")?,
        value: format!("{} {}", d.os_name, d.os_version).trim().to_string(),
    });
    fields.push(DisplayField {
        label: label("field-devices-paired")?,
        value: facts.active_devices.to_string(),
    });
    Ok(Question {
        kind: AuthenticationKind::Approval,
        parameters: DynamicParameters {
            message,
            fields,
            hidden_fields: vec![DisplayField {
                label: "device_id".into(),
                value: registration.device_id.to_string(),
            }],
        },
        context: AccessContext {
            application_name: application_name.to_string(),
            application_icon_url: None,
            ip: client_ip.map(str::to_string),
            location: None,
        },
        number_matching: tessera_protocol::authentication::NumberMatching::Off,
        require_user_verification: false,
        ciba: None,
        expires_in: ctx.config.device_verification_ttl,
        locale: Some(lang),
    })
}

/// Applies an answered (or expired, or failed) verification request to the enrollment waiting
/// for it, then announces that enrollment's change (after the commit) to whoever waits for its
/// status; does nothing for other authentications.
pub(crate) async fn settle_verification(
    ctx: &Ctx,
    authentication: &Authentication,
) -> Result<(), DomainError> {
    let (changed, state) = match authentication.state {
        AuthenticationState::Expired => match settle_expiry(ctx, authentication).await? {
            Some(changed) => (changed, authentication.state),
            None => {
                // Answered before its expiry could be claimed: the answer settles it.
                match authentications::get(&ctx.db, &authentication.id, ctx.now()).await? {
                    Some(answered) => (settle_ended(ctx, &answered).await?, answered.state),
                    None => (None, authentication.state),
                }
            }
        },
        _ => (
            settle_ended(ctx, authentication).await?,
            authentication.state,
        ),
    };
    if let Some(enrollment) = changed {
        tracing::info!(
            authentication_id = %authentication.id,
            enrollment_id = %enrollment,
            state = state.as_str(),
            "new device verification settled"
        );
        announce(ctx, &enrollment).await;
    }
    Ok(())
}

/// Applies a verification request's stored outcome (approved, denied, failed) to the enrollment
/// waiting for it: the enrollment that changed, if any. An expiry is not stored: it is applied
/// only once claimed ([`settle_expiry`]).
async fn settle_ended(
    ctx: &Ctx,
    authentication: &Authentication,
) -> Result<Option<EnrollmentId>, DomainError> {
    Ok(match authentication.state {
        AuthenticationState::Pending | AuthenticationState::Expired => None,
        AuthenticationState::Approved => {
            let Some(activated) =
                enrollments::activate_verified(&ctx.db, &authentication.id).await?
            else {
                return Ok(None);
            };
            // The requests the replaced enrollment can no longer answer end through the one
            // outcome path, as a direct re-pairing's do.
            if let Err(e) = super::outcome::failed(ctx, &activated.failed).await {
                tracing::warn!(error = %e, "the replaced enrollment's requests could not be announced");
            }
            Some(activated.enrollment)
        }
        AuthenticationState::Denied | AuthenticationState::Failed => {
            enrollments::reject_verified(&ctx.db, &authentication.id).await?
        }
    })
}

/// Rejects the enrollment whose verification request read as expired, once its expiry is
/// claimed (`enrollments::claim_verification_expiry`), in the write that claims it and records
/// it (what the expiry sweep would have recorded). A read of the clock alone is not final: the
/// primary device's approval, its time read just before the expiry, may be recorded after it,
/// and the new device would be rejected while its request ends approved. `Some`: the expiry
/// stands (with the enrollment it rejected, if any); `None`: the request was answered first.
async fn settle_expiry(
    ctx: &Ctx,
    authentication: &Authentication,
) -> Result<Option<Option<EnrollmentId>>, DomainError> {
    let mut w = ctx.db.write().await?;
    let claimed = match enrollments::claim_verification_expiry(
        &mut w,
        &authentication.id,
        ctx.now(),
    )
    .await?
    {
        enrollments::VerificationExpiry::Claimed(record) => Some(record),
        enrollments::VerificationExpiry::AlreadyFinal => None,
        enrollments::VerificationExpiry::NotExpired => return Ok(None),
    };
    let queued = match &claimed {
        Some(record) => {
            let events = super::audit::ending_events(record);
            Some(super::audit::append_deferred(ctx, &mut w, events).await?)
        }
        None => None,
    };
    let rejected = enrollments::reject_verified_in(&mut w, &authentication.id).await?;
    let committed = w.commit().await?;
    if queued.is_some_and(|queued| queued.any(&committed)) {
        ctx.events.announce(&[Topic::WebhookOutbox]);
    }
    Ok(Some(rejected))
}

/// Wakes the waiters on a pending enrollment that was just activated or rejected.
async fn announce(ctx: &Ctx, enrollment: &EnrollmentId) {
    ctx.events
        .announce(&[Topic::Enrollment(enrollment.to_string())]);
}

/// The enrollment as it stands, after settling its verification if it was pending one that has
/// since been answered, expired or failed.
pub(crate) async fn settled(ctx: &Ctx, enrollment: Enrollment) -> Result<Enrollment, DomainError> {
    if enrollment.status != EnrollmentState::PendingVerification {
        return Ok(enrollment);
    }
    let Some(verification) = &enrollment.verification_id else {
        return Ok(enrollment);
    };
    let now = ctx.now();
    match authentications::get(&ctx.db, verification, now).await? {
        Some(a) if a.state == AuthenticationState::Pending => return Ok(enrollment),
        Some(a) => settle_verification(ctx, &a).await?,
        None => {
            if let Some(rejected) = enrollments::reject_verified(&ctx.db, verification).await? {
                announce(ctx, &rejected).await;
            }
        }
    }
    Ok(enrollments::by_id(&ctx.db, &enrollment.enrollment_id)
        .await?
        .unwrap_or(Enrollment {
            status: EnrollmentState::Rejected,
            verification_id: None,
            ..enrollment
        }))
}

/// A user's enrollments (active and pending verification), with pending ones settled.
pub(crate) async fn user_devices(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<Enrollment>, DomainError> {
    let devices = enrollments::list_for_user(&ctx.db, app, user).await?;
    settled_devices(ctx, app, user, devices).await
}

/// [`user_devices`] for a list already read (on the request's connection): returned as it is
/// unless one of them is pending verification; then those are settled and the list read again.
pub(crate) async fn settled_devices(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    devices: Vec<Enrollment>,
) -> Result<Vec<Enrollment>, DomainError> {
    if devices
        .iter()
        .all(|d| d.status != EnrollmentState::PendingVerification)
    {
        return Ok(devices);
    }
    for d in devices {
        settled(ctx, d).await?;
    }
    Ok(enrollments::list_for_user(&ctx.db, app, user).await?)
}

/// Follow-up: a decided verification request activates or rejects the enrollment it verifies.
pub(crate) fn follow_up<'a>(
    ctx: &'a Ctx,
    event: &'a super::outcome::DomainEvent,
) -> super::outcome::FollowUpFuture<'a> {
    Box::pin(async move {
        let (record, waiting) = event.ended();
        if !waiting.device_verification {
            return Ok(());
        }
        settle_verification(ctx, record).await
    })
}

#[cfg(test)]
mod crowd_tests;
#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::envelope::SoftwareSigningKey;
    use tessera_protocol::ids::DeviceId;
    use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration, ServerUrl};

    fn registration(model: &str, name: Option<&str>) -> DeviceRegistration {
        let device_key = SoftwareSigningKey::generate().public_jwk();
        DeviceRegistration {
            v: 1,
            audience: ServerUrl::parse("https://auth.example.com").unwrap(),
            device_id: DeviceId::of_device_key(&device_key),
            nonce: DeviceRegistration::new_nonce(),
            issued_at: 1,
            possession_key: SoftwareSigningKey::generate().public_jwk(),
            user_verification_key: SoftwareSigningKey::generate().public_jwk(),
            device: DeviceInfo {
                model: model.into(),
                name: name.map(str::to_string),
                ..DeviceInfo::default()
            },
            signals: DeviceSignals::default(),
            push: PushRegistration::None,
            otp_transport_key: None,
            device_key,
            device_key_proof: String::new(),
            attestation: None,
        }
    }

    #[test]
    fn a_new_device_is_announced_as_new_with_its_place_among_the_users_devices() {
        let facts = |n| VerificationFacts {
            active_devices: n,
            same_device: None,
        };
        let iphone = registration("iPhone 16", Some("Carol's iPhone"));
        assert_eq!(
            verification_message(&iphone, &facts(1), &[]).unwrap().0,
            "Add Carol's iPhone (new) as a second device"
        );
        assert_eq!(
            verification_message(&registration("Pixel 9", None), &facts(2), &[])
                .unwrap()
                .0,
            "Add Pixel 9 (new) as a third device"
        );
        assert_eq!(
            verification_message(&iphone, &facts(10), &[]).unwrap().0,
            "Add Carol's iPhone (new) as device number 11"
        );
    }

    #[test]
    fn the_same_device_pairing_again_says_it_replaces_its_pairing() {
        // It names itself like the asked phone; only the proven key makes it the same device.
        let again = registration("Pixel 9", Some("Anything at all"));
        let asked = VerificationFacts {
            active_devices: 1,
            same_device: Some(SameDevice {
                is_asked_device: true,
                label: "Carol's Pixel".into(),
            }),
        };
        assert_eq!(
            verification_message(&again, &asked, &[]).unwrap().0,
            "Pair this device again (replaces its current pairing)"
        );
        let other = VerificationFacts {
            active_devices: 2,
            same_device: Some(SameDevice {
                is_asked_device: false,
                label: "Carol's Pixel".into(),
            }),
        };
        assert_eq!(
            verification_message(&again, &other, &[]).unwrap().0,
            "Pair Carol's Pixel again (replaces its current pairing)"
        );
    }

    #[test]
    fn the_prompt_is_in_the_users_language_with_english_as_the_fallback() {
        let facts = VerificationFacts {
            active_devices: 1,
            same_device: None,
        };
        let pixel = registration("Pixel 9", None);
        let (text, lang) = verification_message(&pixel, &facts, &["de-AT".to_string()]).unwrap();
        assert_eq!(
            (text.as_str(), lang.as_str()),
            ("Pixel 9 (neu) hinzufügen als zweites Gerät", "de")
        );
        let (text, lang) = verification_message(&pixel, &facts, &["fr".to_string()]).unwrap();
        assert_eq!(
            (text.as_str(), lang.as_str()),
            ("Ajouter Pixel 9 (nouveau) comme deuxième appareil", "fr")
        );
        let (_, lang) = verification_message(&pixel, &facts, &["ja".to_string()]).unwrap();
        assert_eq!(lang, "en");
    }
}
