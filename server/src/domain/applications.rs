//! Applications: the customer's API key identifies one.

use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::ApplicationId;

use super::{Ctx, DomainError};
use crate::store::applications;

pub(crate) use crate::store::applications::Application;

/// The application whose API key is `api_key`, if any.
pub(crate) async fn by_api_key(
    ctx: &Ctx,
    api_key: &str,
) -> Result<Option<Application>, DomainError> {
    Ok(applications::by_api_key(&ctx.db, api_key).await?)
}

/// The application's quotas in force: its own, or the server's defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuotasInForce {
    /// QR sessions open at once.
    pub open_qr_sessions: u32,
    /// Authentication requests pending at once.
    pub pending_requests: u32,
}

/// The quotas in force for `app`.
pub(crate) async fn quotas(ctx: &Ctx, app: &ApplicationId) -> Result<QuotasInForce, DomainError> {
    let own = applications::quotas(&ctx.db, app).await?;
    Ok(QuotasInForce {
        open_qr_sessions: own
            .max_open_qr_sessions
            .unwrap_or(ctx.config.max_open_qr_sessions_per_application),
        pending_requests: own
            .max_pending_requests
            .unwrap_or(ctx.config.max_pending_requests_per_application),
    })
}

/// The refusal of a request over the application's quota of `what`.
pub(crate) fn over_quota(what: &str, quota: u32) -> DomainError {
    DomainError::new(
        ErrorCode::QuotaExceeded,
        format!(
            "the application already has {quota} {what}, its quota; retry when some have ended"
        ),
    )
}

/// Inserts `record` unless the application already has `quota` pending requests (counted and
/// inserted in one serialised step, so a burst never overshoots), inside `tx`. The quota is read
/// before the transaction begins: a transaction waiting for a second connection could exhaust
/// the pool under a burst.
pub(crate) async fn insert_within_pending_quota(
    ctx: &Ctx,
    tx: &mut sqlx::AnyConnection,
    record: &crate::store::authentications::Authentication,
    quota: u32,
) -> Result<(), DomainError> {
    applications::lock_for_quota(tx, ctx.db.engine(), &record.application_id).await?;
    let pending = crate::store::authentications::pending_for_application(
        tx,
        &record.application_id,
        ctx.now(),
    )
    .await?;
    if pending >= i64::from(quota) {
        return Err(over_quota("pending requests", quota));
    }
    crate::store::authentications::insert(&mut *tx, record).await?;
    Ok(())
}
