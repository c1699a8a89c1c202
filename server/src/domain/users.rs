//! Users of an application.

use tessera_protocol::api::User;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::{Ctx, DomainError};
use crate::store::users;

/// The user, or `user_not_found`.
pub(crate) async fn require_user(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<User, DomainError> {
    users::get(&ctx.db, app, user_id).await?.ok_or_else(|| {
        DomainError::new(ErrorCode::UserNotFound, "no such user in this application")
    })
}
