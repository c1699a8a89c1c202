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
use crate::store::applications::{self, AdditionalDevicePolicy};
use crate::store::authentications::{self, Authentication};
use crate::store::enrollments::{self, Enrollment};

/// The device that must approve a new device of this user, if the application's policy asks
/// for one and the user has an active primary device.
pub(crate) async fn verifier(
    conn: &mut sqlx::AnyConnection,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Option<Enrollment>, DomainError> {
    let policy = applications::additional_device_policy(&mut *conn, app).await?;
    if policy != AdditionalDevicePolicy::VerifyWithPrimary {
        return Ok(None);
    }
    Ok(enrollments::primary(conn, app, user).await?)
}

/// The question the primary device is asked about a new device.
pub(crate) fn question(
    ctx: &Ctx,
    application_name: &str,
    registration: &DeviceRegistration,
    client_ip: Option<&str>,
) -> Question {
    let d = &registration.device;
    let mut fields = vec![DisplayField {
        label: "Device".into(),
        value: d.name.clone().unwrap_or_else(|| d.model.clone()),
    }];
    if d.name.is_some() {
        fields.push(DisplayField {
            label: "Model".into(),
            value: d.model.clone(),
        });
    }
    fields.push(DisplayField {
        label: "System".into(),
        value: format!("{} {}", d.os_name, d.os_version).trim().to_string(),
    });
    Question {
        kind: AuthenticationKind::Approval,
        parameters: DynamicParameters {
            message: format!("Add a new device to your {application_name} account?"),
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
    }
}

/// Applies an answered (or expired, or failed) verification request to the enrollment waiting
/// for it, then announces that enrollment's change (after the commit) to whoever waits for its
/// status; does nothing for other authentications.
pub(crate) async fn settle_verification(
    ctx: &Ctx,
    authentication: &Authentication,
) -> Result<(), DomainError> {
    let changed = match authentication.state {
        AuthenticationState::Pending => None,
        AuthenticationState::Approved => {
            enrollments::activate_verified(&ctx.db, &authentication.id).await?
        }
        AuthenticationState::Denied
        | AuthenticationState::Expired
        | AuthenticationState::Failed => {
            enrollments::reject_verified(&ctx.db, &authentication.id).await?
        }
    };
    if let Some(enrollment) = changed {
        tracing::info!(
            authentication_id = %authentication.id,
            enrollment_id = %enrollment,
            state = authentication.state.as_str(),
            "new device verification settled"
        );
        announce(ctx, &enrollment).await;
    }
    Ok(())
}

/// Wakes the waiters on a pending enrollment that was just activated or rejected.
async fn announce(ctx: &Ctx, enrollment: &EnrollmentId) {
    ctx.events
        .announce(&ctx.db, &[Topic::Enrollment(enrollment.to_string())])
        .await;
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
        let super::outcome::DomainEvent::AuthenticationEnded(record) = event;
        settle_verification(ctx, record).await
    })
}
