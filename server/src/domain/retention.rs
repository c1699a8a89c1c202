//! Retention: what finished or expired longer ago than `retention_days` is purged by a
//! background task on every instance (deleting is idempotent, so instances need no
//! coordination), timed by the server's clock.

use super::{Ctx, DomainError};
use crate::store::retention::{self, Purged};

/// Purges what is past retention now (by the server's clock).
pub(crate) async fn purge(ctx: &Ctx) -> Result<Purged, DomainError> {
    Ok(retention::purge(&ctx.db, ctx.config.retention_days, ctx.now()).await?)
}

/// Purges every `retention_sweep` until the server stops.
pub(crate) async fn run(ctx: Ctx) {
    if ctx.config.retention_days == 0 {
        return;
    }
    loop {
        match purge(&ctx).await {
            Ok(purged) if purged != Purged::default() => {
                tracing::info!(?purged, "purged what is past retention")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed; retrying later"),
        }
        tokio::time::sleep(ctx.config.retention_sweep).await;
    }
}
