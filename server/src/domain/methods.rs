//! Authentication methods a user has registered, as mandatory methods name them.

use tessera_protocol::api::{AuthenticationMethod, EnrollmentState};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::{Ctx, DomainError};
use crate::store::{enrollments, otp, users};

/// What the user has registered, as mandatory methods name it.
pub(crate) async fn registered_methods(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<AuthenticationMethod>, DomainError> {
    let mut methods = Vec::new();
    if enrollments::list_for_user(&ctx.db, app, user)
        .await?
        .iter()
        .any(|e| e.status == EnrollmentState::Active)
    {
        methods.push(AuthenticationMethod::PingidMobile);
    }
    if let Some(contacts) = users::contacts(&ctx.db, app, user).await? {
        if contacts.phone.is_some() {
            methods.extend([AuthenticationMethod::Sms, AuthenticationMethod::Voice]);
        }
        if contacts.email.is_some() {
            methods.push(AuthenticationMethod::Email);
        }
    }
    for token in otp::tokens_for_user(&ctx.db, app, user).await? {
        methods.push(token.kind.method());
    }
    // FIDO credentials (a flagged, cloned one counts for nothing).
    for credential in crate::store::fido_credentials::list_for_user(&ctx.db, app, user).await? {
        if super::fido::authentication::usable(&credential) {
            methods.push(credential.kind.method());
        }
    }
    Ok(methods)
}

/// Refuses a user who lacks methods the application makes mandatory
/// (`mandatory_methods_missing`, listing them), on every path that authenticates.
pub(crate) async fn require_mandatory(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), DomainError> {
    let policy = crate::store::applications::otp_policy(&ctx.db, app).await?;
    require_mandatory_of(ctx, app, user, &policy).await
}

/// [`require_mandatory`] with the application's OTP settings already read.
pub(crate) async fn require_mandatory_of(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    policy: &crate::store::applications::OtpPolicy,
) -> Result<(), DomainError> {
    if policy.mandatory_methods.is_empty() {
        return Ok(());
    }
    let registered = registered_methods(ctx, app, user).await?;
    let missing: Vec<tessera_protocol::api::AuthenticationMethod> = policy
        .mandatory_methods
        .iter()
        .copied()
        .filter(|m| !registered.contains(m))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|m| m.as_str()).collect();
    Err(DomainError::new(
        tessera_protocol::error::ErrorCode::MandatoryMethodsMissing,
        format!(
            "the user must register these authentication methods first: {}",
            names.join(", ")
        ),
    )
    .with_missing_methods(missing))
}
