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
    Ok(methods)
}
