//! Change notifications between server instances sharing one PostgreSQL database
//! (`LISTEN`/`NOTIFY`). SQLite has one server process per file, so there is nothing to send.

use sqlx::postgres::PgListener;

use super::{Database, Engine, StoreError};

/// The channel every instance listens on.
pub const CHANNEL: &str = "tessera_changes";

/// Sends `payload` to every instance listening (PostgreSQL; nothing on SQLite). Sent after the
/// change committed, so a woken instance reads the new state.
pub async fn notify(db: &Database, payload: &str) -> Result<(), StoreError> {
    if db.engine() != Engine::Postgres {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(db.writer())
        .await?;
    Ok(())
}

/// A connection listening for other instances' notifications.
pub struct Listener(PgListener);

/// What the listener heard.
#[derive(Debug)]
pub enum Heard {
    /// A notification's payload.
    Payload(String),
    /// The connection was lost and has been re-established: notifications sent meanwhile are
    /// lost, so whatever waits must look again.
    Reconnected,
}

impl Listener {
    /// Listens on [`CHANNEL`]; `None` on SQLite.
    pub async fn connect(db: &Database) -> Result<Option<Self>, StoreError> {
        if db.engine() != Engine::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(db.url()).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(Self(listener)))
    }

    /// The next notification (reconnecting when the connection was lost).
    pub async fn recv(&mut self) -> Result<Heard, StoreError> {
        match self.0.try_recv().await? {
            Some(notification) => Ok(Heard::Payload(notification.payload().to_string())),
            None => Ok(Heard::Reconnected),
        }
    }
}
