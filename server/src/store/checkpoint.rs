//! SQLite WAL checkpoints off the write path.
//!
//! In WAL mode every commit appends the pages it changed to the write-ahead log, and a
//! checkpoint copies them back into the database file and syncs both. By default SQLite runs
//! that checkpoint inside the commit that takes the log past 1,000 pages, on the committing
//! connection: here the one writer connection, while every other writer queues behind it. A
//! request that creates an authentication changes about 25 pages (its rows and their indexes),
//! so under load the writer stopped for a checkpoint every 40 transactions or so, and copied
//! the same hot index pages again each time.
//!
//! Instead, a task of its own checkpoints every [`CHECKPOINT_INTERVAL`] on a connection of its
//! own in `PASSIVE` mode, which neither waits for nor blocks readers and writers: the writer
//! keeps appending while the copy runs. The writer's own automatic checkpoint stays as a safety
//! net at [`WRITER_AUTOCHECKPOINT_PAGES`] (256 MiB of log), reached only if this task cannot
//! keep up. With `synchronous = NORMAL` a commit becomes durable against power loss at the
//! next checkpoint (a process crash loses nothing), so this also bounds that window by the
//! interval at any load, where the 1,000-page rule left it open for minutes on a quiet server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Row};
use tokio::sync::watch;

/// How often the checkpointer copies the log back into the database file.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// The writer connection's `wal_autocheckpoint`: log pages (4 KiB each) after which a commit
/// checkpoints by itself, which happens only when the checkpointer falls behind.
pub const WRITER_AUTOCHECKPOINT_PAGES: u32 = 65_536;

/// The running checkpointer: stops when [`Checkpointer::stop`] is called or when the last
/// handle to it is dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: watch::Sender<bool>,
    /// Checkpoints run holding the writer, because the log had grown long (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    held: Arc<AtomicU64>,
}

/// Log length (frames of 4 KiB) at which a checkpoint is run holding the writer: 128 MiB.
///
/// Such a checkpoint syncs the log and the database file while every writer waits (each sync
/// took 19 ms at the median, up to 92 ms, on the reference machine). At 16 MiB a steady stream
/// of CIBA requests reached it every tick: p99 at 16 clients fell from about 100 ms to 40 ms and
/// throughput rose 10–20 % when it was raised to this (docs/benchmarks.md). The background
/// checkpoint still syncs every [`CHECKPOINT_INTERVAL`], so durability is unchanged; only the log
/// file grows longer under sustained load before it starts over.
pub const LONG_LOG_FRAMES: i64 = 32_768;

/// What a checkpoint reported.
struct Log {
    /// Frames in the log.
    frames: i64,
}

/// One `PASSIVE` checkpoint on `conn`.
async fn checkpoint<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Any>,
) -> Result<Log, sqlx::Error> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await?;
    // (busy, frames in the log, frames copied); -1 when the database is not in WAL mode.
    Ok(Log {
        frames: row.try_get(1)?,
    })
}

impl Checkpointer {
    /// Opens a connection of its own with `options` and starts checkpointing on it; `writer`
    /// is the one writer connection, whose turn it takes when the log has grown long.
    pub(crate) async fn start(
        options: AnyConnectOptions,
        writer: Arc<super::writer::DirectWriter>,
    ) -> Result<Self, sqlx::Error> {
        let mut conn = options.connect().await?;
        sqlx::Executor::execute(&mut conn, "PRAGMA busy_timeout = 10000").await?;
        let (stop, mut stopped) = watch::channel(false);
        let held_count = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&held_count);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // A stop, or every handle dropped.
                    _ = stopped.changed() => break,
                }
                let log = match checkpoint(&mut conn).await {
                    Ok(log) => log,
                    Err(error) => {
                        tracing::warn!(%error, "the WAL checkpoint failed; the next one retries");
                        continue;
                    }
                };
                if log.frames >= LONG_LOG_FRAMES {
                    // Under steady writes the log is never copied to its end beside the writer
                    // (a commit lands while the copy runs), and SQLite starts it over only then:
                    // once it is long, copy it while holding the writer, whose next transaction
                    // starts the log from its beginning.
                    let held = async {
                        // No writer writes while this turn is held: the copy reaches the end
                        // of the log, and the next transaction starts it over.
                        let _turn = writer.turn().await?;
                        checkpoint(&mut conn).await
                    };
                    match held.await {
                        Ok(_) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the WAL checkpoint on the writer failed");
                        }
                    }
                }
            }
            let _ = sqlx::Connection::close(conn).await;
        });
        Ok(Self {
            stop,
            held: held_count,
        })
    }

    /// Stops the task (after the checkpoint under way, if any).
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// How many checkpoints ran holding the writer.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    /// Whether the database file alone, without its log, holds an application named `name`:
    /// what a checkpoint copied there. Read from a copy of the file (a copy taken while a
    /// checkpoint writes may not open: not yet).
    async fn database_file_holds(dir: &std::path::Path, name: &str) -> bool {
        let copy = dir.join("file-only.db");
        let _ = std::fs::remove_file(&copy);
        if std::fs::copy(dir.join("store.db"), &copy).is_err() {
            return false;
        }
        let Ok(mut conn) =
            sqlx::any::AnyConnectOptions::from_str(&format!("sqlite://{}?mode=ro", copy.display()))
                .unwrap()
                .connect()
                .await
        else {
            return false;
        };
        let found = sqlx::query("SELECT COUNT(*) FROM applications WHERE name = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .ok()
            .and_then(|row| row.try_get::<i64, _>(0).ok());
        let _ = sqlx::Connection::close(conn).await;
        found == Some(1)
    }

    #[tokio::test]
    async fn writes_are_checkpointed_in_the_background_and_the_writer_checkpoints_late() {
        let (dir, db, _) = crate::store::test_db_with_app().await;
        let writer_threshold: i64 = sqlx::query("PRAGMA wal_autocheckpoint")
            .fetch_one(db.writer())
            .await
            .unwrap()
            .get(0);
        assert_eq!(writer_threshold, i64::from(WRITER_AUTOCHECKPOINT_PAGES));
        // One small write: far below any page count that makes a commit checkpoint by itself.
        crate::store::applications::insert(
            &db,
            &crate::store::applications::Application {
                id: tessera_protocol::ids::ApplicationId::generate(),
                name: "written after start".into(),
                created_at: 0,
            },
            "another digest",
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !database_file_holds(dir.path(), "written after start").await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no background checkpoint copied the write into the database file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.close().await;
    }

    /// Frames in the log, as a checkpoint on a connection of the test's own reports them.
    async fn log_frames(db: &crate::store::Database) -> i64 {
        let mut conn = db.reader().await.unwrap();
        checkpoint(&mut *conn).await.unwrap().frames
    }

    #[tokio::test]
    async fn a_long_log_is_checkpointed_holding_the_writer_and_then_starts_over() {
        let (_dir, db, _) = crate::store::test_db_with_app().await;
        sqlx::query("CREATE TABLE filler (x TEXT)")
            .execute(db.writer())
            .await
            .unwrap();
        // A little more than LONG_LOG_FRAMES pages of log, one MiB (256 pages) per insert.
        let page = "x".repeat(1 << 20);
        for _ in 0..(LONG_LOG_FRAMES / 256 + 8) {
            sqlx::query("INSERT INTO filler (x) VALUES ($1)")
                .bind(&page)
                .execute(db.writer())
                .await
                .unwrap();
        }
        assert!(log_frames(&db).await >= LONG_LOG_FRAMES);
        let checkpointer = db.checkpointer.clone().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while checkpointer.held() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no checkpoint held the writer for the long log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The next write starts the log over from its beginning.
        sqlx::query("DELETE FROM filler")
            .execute(db.writer())
            .await
            .unwrap();
        assert!(log_frames(&db).await < LONG_LOG_FRAMES);
        db.close().await;
    }
}
