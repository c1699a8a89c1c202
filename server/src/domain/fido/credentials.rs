//! The customer API over a user's FIDO credentials: list, rename, remove (removal is
//! recorded in the audit log; user deletion removes them all).

use tessera_protocol::error::ErrorCode;
use tessera_protocol::fido::{FidoCredential, FidoCredentialList};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::super::audit::{Actor, Event, record};
use super::super::{Ctx, DomainError};
use super::registration::MAX_NICKNAME_CHARS;
use crate::store::fido_credentials::{self as store, StoredCredential};

fn not_found() -> DomainError {
    DomainError::new(
        ErrorCode::FidoCredentialNotFound,
        "the user has no such FIDO credential",
    )
}

/// The customer API's view of a stored credential (never its key).
pub(crate) fn view(c: &StoredCredential) -> FidoCredential {
    FidoCredential {
        id: c.id.clone(),
        credential_type: c.kind,
        nickname: c.nickname.clone(),
        aaguid: c.aaguid.clone(),
        counter: u32::try_from(c.counter).unwrap_or(u32::MAX),
        backup_eligible: c.backup_eligible,
        backup_state: c.backup_state,
        discoverable: c.discoverable,
        compromised_at: c.compromised_at,
        created_at: c.created_at,
        last_used_at: c.last_used_at,
    }
}

/// A user's credentials.
pub(crate) async fn list(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<FidoCredentialList, DomainError> {
    super::super::users::require_user(ctx, app, user).await?;
    Ok(FidoCredentialList {
        credentials: store::list_for_user(&ctx.db, app, user)
            .await?
            .iter()
            .map(view)
            .collect(),
    })
}

/// Renames a user's credential.
pub(crate) async fn rename(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    id: &str,
    nickname: &str,
) -> Result<FidoCredential, DomainError> {
    let nickname = nickname.trim();
    if nickname.is_empty()
        || nickname.chars().count() > MAX_NICKNAME_CHARS
        || nickname.chars().any(|c| c.is_control())
    {
        return Err(DomainError::invalid(format!(
            "nickname must be 1 to {MAX_NICKNAME_CHARS} characters without control characters"
        )));
    }
    if !store::rename(&ctx.db, app, user, id, nickname).await? {
        return Err(not_found());
    }
    store::list_for_user(&ctx.db, app, user)
        .await?
        .iter()
        .find(|c| c.id == id)
        .map(view)
        .ok_or_else(not_found)
}

/// Removes a user's credential.
pub(crate) async fn remove(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    id: &str,
) -> Result<(), DomainError> {
    if !store::remove(&ctx.db, app, user, id).await? {
        return Err(not_found());
    }
    let event = Event::new("fido.removed", Actor::Customer, "success")
        .app(app.as_str())
        .user(user.as_str())
        .subject(id)
        .details(serde_json::json!({ "credential": id }));
    record(ctx, event).await;
    Ok(())
}
