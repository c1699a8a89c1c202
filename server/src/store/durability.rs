//! When a commit returns, as far as the disk is concerned ([`CommitDurability`]): one setting
//! for both engines, mapped to SQLite's `synchronous` and PostgreSQL's `synchronous_commit`.

use crate::config::CommitDurability;

/// SQLite's `synchronous` for `durability`.
pub(crate) fn sqlite_synchronous(durability: Option<CommitDurability>) -> &'static str {
    match durability {
        Some(CommitDurability::Flushed) => "FULL",
        Some(CommitDurability::Written) | None => "NORMAL",
    }
}

/// The `synchronous_commit` PostgreSQL's sessions ask for, if any (unset: the database's own).
pub(crate) fn postgres_synchronous_commit(
    durability: Option<CommitDurability>,
) -> Option<&'static str> {
    match durability {
        Some(CommitDurability::Flushed) => Some("on"),
        Some(CommitDurability::Written) => Some("off"),
        None => None,
    }
}

/// `url` (a `postgres://` URL) with `durability`'s `synchronous_commit` added to the options
/// its sessions start with, after any it already has (a later `-c` wins); unchanged when unset.
pub(crate) fn postgres_url_with(url: &str, durability: Option<CommitDurability>) -> String {
    match postgres_synchronous_commit(durability) {
        Some(value) => super::postgres_url_with_option(url, "synchronous_commit", value),
        None => url.to_string(),
    }
}

/// The durability a session of `db` runs with: SQLite's `synchronous` on the writer (`FULL` or
/// above: flushed), PostgreSQL's `synchronous_commit` on a request's connection (`off`: written;
/// `local`, `on`, `remote_write`, `remote_apply`: flushed, at least on this server).
pub(crate) async fn in_effect(db: &super::Database) -> Result<CommitDurability, super::StoreError> {
    Ok(match db.engine() {
        super::Engine::Sqlite => {
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(db.writer())
                .await?;
            if synchronous >= 2 {
                CommitDurability::Flushed
            } else {
                CommitDurability::Written
            }
        }
        super::Engine::Postgres => {
            let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(db.pool())
                .await?;
            if setting == "off" {
                CommitDurability::Written
            } else {
                CommitDurability::Flushed
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Database;
    use std::time::Duration;

    /// SQLite's `synchronous` on the writer and on a reader connection of a database opened
    /// with `durability` (0 OFF, 1 NORMAL, 2 FULL), and the durability it reports.
    async fn sqlite_settings(durability: Option<CommitDurability>) -> (i64, i64, CommitDurability) {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let db = Database::connect_with(&url, 2, Duration::from_secs(5), durability)
            .await
            .expect("database");
        let writer: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(db.writer())
            .await
            .expect("writer");
        let reader: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(db.pool())
            .await
            .expect("reader");
        let reported = in_effect(&db).await.expect("in effect");
        db.close().await;
        (writer, reader, reported)
    }

    #[tokio::test]
    async fn sqlite_commits_are_synced_only_when_flushed_is_asked_for() {
        use CommitDurability::{Flushed, Written};
        assert_eq!(sqlite_settings(None).await, (1, 1, Written));
        assert_eq!(sqlite_settings(Some(Written)).await, (1, 1, Written));
        assert_eq!(sqlite_settings(Some(Flushed)).await, (2, 2, Flushed));
    }

    #[tokio::test]
    async fn postgres_sessions_ask_for_the_setting_or_keep_the_databases() {
        use CommitDurability::{Flushed, Written};
        let Some(url) =
            crate::store::postgres_url_for_tests("check PostgreSQL's commit durability")
        else {
            return;
        };
        // `synchronous_commit` on a request's connection and inside a write transaction (they
        // must agree), and the durability the database reports.
        let setting = |durability| {
            let url = url.clone();
            async move {
                let db = Database::connect_with(&url, 2, Duration::from_secs(5), durability)
                    .await
                    .expect("database");
                let (read, written) = crate::store::shown_setting(&db, "synchronous_commit").await;
                let reported = in_effect(&db).await.expect("in effect");
                db.close().await;
                assert_eq!(read, written);
                (read, reported)
            }
        };
        assert_eq!(setting(Some(Written)).await, ("off".to_string(), Written));
        assert_eq!(setting(Some(Flushed)).await, ("on".to_string(), Flushed));
        // Unset: what a session of this role on this database gets without asking.
        let mut plain = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("plain connection");
        let databases: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut plain)
            .await
            .expect("plain");
        let expected = if databases == "off" { Written } else { Flushed };
        assert_eq!(setting(None).await, (databases, expected));
    }

    #[test]
    fn each_setting_maps_to_both_engines() {
        assert_eq!(sqlite_synchronous(None), "NORMAL");
        assert_eq!(
            sqlite_synchronous(Some(CommitDurability::Written)),
            "NORMAL"
        );
        assert_eq!(sqlite_synchronous(Some(CommitDurability::Flushed)), "FULL");
        assert_eq!(postgres_synchronous_commit(None), None);
        assert_eq!(
            postgres_url_with("postgres://u:p@h/db", None),
            "postgres://u:p@h/db"
        );
        assert_eq!(
            postgres_url_with("postgres://u:p@h/db", Some(CommitDurability::Written)),
            "postgres://u:p@h/db?options%5Bsynchronous_commit%5D=off"
        );
        assert_eq!(
            postgres_url_with(
                "postgres://u:p@h/db?host=/run/postgresql",
                Some(CommitDurability::Flushed)
            ),
            "postgres://u:p@h/db?host=/run/postgresql&options%5Bsynchronous_commit%5D=on"
        );
    }
}
