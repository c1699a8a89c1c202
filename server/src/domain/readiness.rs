//! Whether this instance should be sent traffic (`/readyz`): its database answers, within
//! [`crate::ServerConfig::readiness_timeout`], and holds every migration this build knows.

use super::Ctx;

/// Why the instance is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotReady {
    /// The database did not answer in time, or answered with an error.
    #[error("the database does not answer")]
    DatabaseUnavailable,
    /// Migrations this build needs are not applied (a database restored from an older backup,
    /// or migrated by an older build while this one was running).
    #[error("{pending} database migration(s) of this version are not applied")]
    MigrationsPending {
        /// How many.
        pending: usize,
    },
}

impl NotReady {
    /// A stable name for the reason, for load balancers and dashboards.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            NotReady::DatabaseUnavailable => "database_unavailable",
            NotReady::MigrationsPending { .. } => "migrations_pending",
        }
    }
}

/// Ready when the database answers and its schema is current.
pub(crate) async fn check(ctx: &Ctx) -> Result<(), NotReady> {
    let pending = tokio::time::timeout(ctx.config.readiness_timeout, async {
        ctx.db.ping().await?;
        ctx.db.pending_migrations().await
    })
    .await
    .map_err(|_| NotReady::DatabaseUnavailable)?
    .map_err(|e| {
        tracing::warn!(error = %e, "readiness: the database does not answer");
        NotReady::DatabaseUnavailable
    })?;
    if pending > 0 {
        return Err(NotReady::MigrationsPending { pending });
    }
    Ok(())
}
