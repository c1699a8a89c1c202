//! The requests' PostgreSQL connections, on the database `DATABASE_URL` names (skipped
//! without one): given back at once and reused, a dropped transaction rolled back before
//! reuse, a lost connection closed, the limit and its timeout.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{Connection, Row};

use super::{PgConnections, leaves_connection_unusable};
use crate::store::postgres_url_for_tests;

/// What the tests here say they skip without a PostgreSQL `DATABASE_URL`.
const PURPOSE: &str = "test the requests' PostgreSQL connections";

/// Connections to the database `DATABASE_URL` names, at most `max`, or `None` without one
/// ([`postgres_url_for_tests`]).
fn connections(max: u32, acquire_timeout: Duration) -> Option<PgConnections> {
    let url = postgres_url_for_tests(PURPOSE)?;
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(&url).expect("options");
    Some(PgConnections::new(options, max, acquire_timeout))
}

/// The backend process serving `held`: which connection it is.
async fn backend(held: &mut super::HeldConnection) -> i32 {
    let conn = held.connection().expect("a connection");
    sqlx::query("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
        .get(0)
}

#[tokio::test]
async fn a_connection_is_idle_again_as_soon_as_it_is_given_back_and_is_reused() {
    let Some(connections) = connections(4, Duration::from_secs(5)) else {
        return;
    };
    let mut held = connections.acquire().await.expect("connection");
    let first = backend(&mut held).await;
    drop(held);
    // Taken back at once: no ping awaited in a task before it is idle again.
    assert_eq!(connections.idle_count(), 1);
    let mut again = connections.acquire().await.expect("connection");
    assert_eq!(backend(&mut again).await, first, "the same connection");
    assert_eq!(connections.idle_count(), 0);
}

#[tokio::test]
async fn a_statement_read_to_its_first_row_leaves_the_rest_to_the_next() {
    let Some(connections) = connections(1, Duration::from_secs(5)) else {
        return;
    };
    let mut held = connections.acquire().await.expect("connection");
    let conn = held.connection().expect("a connection");
    // A thousand rows, read up to the first: the rest (and the ReadyForQuery) is still owed.
    let first = sqlx::query("SELECT n FROM generate_series(1, 1000) AS n")
        .fetch_optional(&mut *conn)
        .await
        .expect("first row")
        .expect("a row");
    assert_eq!(first.get::<i32, _>(0), 1);
    drop(held);
    assert_eq!(connections.idle_count(), 1);
    // The next statement on it reads what was owed first and gets its own answer.
    let mut next = connections.acquire().await.expect("connection");
    let answer: i64 = sqlx::query("SELECT 41::BIGINT + 1")
        .fetch_one(next.connection().expect("a connection"))
        .await
        .expect("answer")
        .get(0);
    assert_eq!(answer, 42);
}

#[tokio::test]
async fn a_transaction_dropped_uncommitted_is_rolled_back_before_the_connection_is_reused() {
    let Some(connections) = connections(2, Duration::from_secs(5)) else {
        return;
    };
    let key: i64 = rand::random::<i64>() >> 1;
    let mut held = connections.acquire().await.expect("connection");
    let pid = backend(&mut held).await;
    {
        let conn = held.connection().expect("a connection");
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .expect("locked");
        sqlx::query("CREATE TEMPORARY TABLE dropped_transaction_probe (n INTEGER)")
            .execute(&mut *tx)
            .await
            .expect("created");
        // Dropped without a commit: sqlx queues a ROLLBACK, sent by nobody yet.
    }
    drop(held);
    // Not idle until the rollback is flushed and the connection answered a ping.
    let mut other = connections.acquire().await.expect("connection");
    assert_ne!(backend(&mut other).await, pid, "a connection of its own");
    let mut released = false;
    for _ in 0..100 {
        let free: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(other.connection().expect("a connection"))
            .await
            .expect("try lock")
            .get(0);
        if free {
            released = true;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(other.connection().expect("a connection"))
                .await
                .expect("unlock");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "the dropped transaction's lock was released");
    drop(other);
    // Both connections idle again, the rolled-back one outside any transaction.
    for _ in 0..100 {
        if connections.idle_count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connections.idle_count(), 2);
    // Neither sees the table the dropped transaction created: it was rolled back, not left
    // open on the connection for its next user.
    let mut both = Vec::new();
    for _ in 0..2 {
        let mut held = connections.acquire().await.expect("connection");
        let undone: bool =
            sqlx::query("SELECT to_regclass('pg_temp.dropped_transaction_probe') IS NULL")
                .fetch_one(held.connection().expect("a connection"))
                .await
                .expect("answer")
                .get(0);
        assert!(undone, "the dropped transaction was rolled back");
        both.push(held);
    }
}

#[tokio::test]
async fn a_lost_connection_is_closed_with_the_idle_ones_and_replaced() {
    let Some(connections) = connections(3, Duration::from_secs(5)) else {
        return;
    };
    let mut a = connections.acquire().await.expect("connection");
    let mut b = connections.acquire().await.expect("connection");
    let (pid_a, pid_b) = (backend(&mut a).await, backend(&mut b).await);
    drop(b);
    assert_eq!(connections.idle_count(), 1);

    // The server ends `a`'s session from another connection.
    let mut killer = connections.acquire().await.expect("connection");
    assert_eq!(backend(&mut killer).await, pid_b, "the idle one, reused");
    let ended: bool = sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid_a)
        .fetch_one(killer.connection().expect("a connection"))
        .await
        .expect("terminated")
        .get(0);
    assert!(ended);
    drop(killer);
    assert_eq!(connections.idle_count(), 1);

    let failed = sqlx::query("SELECT 1")
        .execute(a.connection().expect("a connection"))
        .await
        .expect_err("the session is gone");
    assert!(leaves_connection_unusable(&failed), "{failed}");
    a.note(&failed);
    drop(a);
    // Closed, and the idle one with it.
    assert_eq!(connections.idle_count(), 0);

    let mut fresh = connections.acquire().await.expect("connection");
    let pid = backend(&mut fresh).await;
    assert!(pid != pid_a && pid != pid_b, "a new connection");
}

#[tokio::test]
async fn a_statement_the_database_refuses_or_cancels_keeps_its_connection() {
    let Some(connections) = connections(1, Duration::from_secs(5)) else {
        return;
    };
    let mut held = connections.acquire().await.expect("connection");
    let pid = backend(&mut held).await;
    let refused = sqlx::query("SELECT 1 / 0")
        .execute(held.connection().expect("a connection"))
        .await
        .expect_err("division by zero");
    assert!(!leaves_connection_unusable(&refused), "{refused}");
    held.note(&refused);
    // A statement canceled by its timeout (57014, of the class that otherwise ends sessions).
    sqlx::query("SET statement_timeout = 20")
        .execute(held.connection().expect("a connection"))
        .await
        .expect("set");
    let canceled = sqlx::query("SELECT pg_sleep(1)")
        .execute(held.connection().expect("a connection"))
        .await
        .expect_err("canceled");
    assert!(
        canceled
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "57014"),
        "{canceled}"
    );
    assert!(!leaves_connection_unusable(&canceled), "{canceled}");
    held.note(&canceled);
    sqlx::query("RESET statement_timeout")
        .execute(held.connection().expect("a connection"))
        .await
        .expect("reset");
    drop(held);
    let mut again = connections.acquire().await.expect("connection");
    assert_eq!(backend(&mut again).await, pid);
}

#[tokio::test]
async fn callers_beyond_the_limit_wait_their_turn_and_give_up_at_the_timeout() {
    let Some(connections) = connections(1, Duration::from_millis(300)) else {
        return;
    };
    let held = connections.acquire().await.expect("connection");
    let refused = connections.acquire().await.expect_err("none free");
    assert!(matches!(refused, sqlx::Error::PoolTimedOut), "{refused}");

    // A waiting caller gets the connection given back while it waits.
    let waiting = tokio::spawn({
        let connections = connections.clone();
        async move { connections.acquire().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    waiting
        .await
        .expect("joined")
        .expect("given the connection");

    connections.close().await;
    let closed = connections.acquire().await.expect_err("closed");
    assert!(matches!(closed, sqlx::Error::PoolClosed), "{closed}");
    assert_eq!(connections.idle_count(), 0);
}

#[test]
fn only_the_databases_answers_leave_a_connection_usable() {
    assert!(leaves_connection_unusable(&sqlx::Error::Io(
        std::io::Error::from(std::io::ErrorKind::ConnectionReset)
    )));
    assert!(leaves_connection_unusable(&sqlx::Error::Protocol(
        "unexpected message".into()
    )));
    assert!(!leaves_connection_unusable(&sqlx::Error::RowNotFound));
    assert!(!leaves_connection_unusable(&sqlx::Error::ColumnNotFound(
        "x".into()
    )));
}

#[tokio::test]
async fn a_write_dropped_open_is_rolled_back_and_its_connection_waits_for_that() {
    let Some(url) = postgres_url_for_tests(PURPOSE) else {
        return;
    };
    // One connection for requests: the next write must get the same one, once rolled back.
    let db = crate::store::Database::connect(&url, 1)
        .await
        .expect("database");
    let mut w = db.write().await.expect("write");
    sqlx::query("CREATE TEMPORARY TABLE dropped_write_probe (n INTEGER)")
        .execute(&mut w)
        .await
        .expect("created");
    let pid: i32 = sqlx::query("SELECT pg_backend_pid()")
        .fetch_one(&mut w)
        .await
        .expect("pid")
        .get(0);
    drop(w);

    let mut next = db.write().await.expect("the connection, given back");
    let row =
        sqlx::query("SELECT pg_backend_pid(), to_regclass('pg_temp.dropped_write_probe') IS NULL")
            .fetch_one(&mut next)
            .await
            .expect("read");
    assert_eq!(row.get::<i32, _>(0), pid, "the same connection");
    assert!(row.get::<bool, _>(1), "the dropped write was rolled back");
    next.commit().await.expect("commit");
    db.close().await;
}

#[tokio::test]
async fn a_connection_idle_too_long_is_closed_instead_of_handed_out() {
    let Some(connections) = connections(2, Duration::from_secs(5)) else {
        return;
    };
    let mut held = connections.acquire().await.expect("connection");
    let first = backend(&mut held).await;
    drop(held);
    // Time moves past the limit while it is idle (paused only for the jump: the statements
    // below wait on the network, which a paused clock would time out).
    tokio::time::pause();
    tokio::time::advance(super::IDLE_LIMIT + Duration::from_secs(1)).await;
    tokio::time::resume();
    let mut fresh = connections.acquire().await.expect("connection");
    assert_ne!(backend(&mut fresh).await, first, "a new connection");
    assert_eq!(connections.idle_count(), 0, "the old one closed");
}

#[tokio::test]
async fn a_write_on_a_requests_connection_that_is_lost_closes_it_for_the_next_request() {
    let Some(url) = postgres_url_for_tests(PURPOSE) else {
        return;
    };
    let db = crate::store::Database::connect(&url, 2)
        .await
        .expect("database");
    let mut reader = db.reader().await.expect("reader");
    let pid: i32 = sqlx::query("SELECT pg_backend_pid()")
        .fetch_one(&mut *reader)
        .await
        .expect("pid")
        .get(0);
    {
        let mut w = db.write_on(&mut reader).await.expect("write on the reader");
        // The server ends the session from the other connection, inside the transaction.
        let ended: bool = sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(db.pool())
            .await
            .expect("terminated")
            .get(0);
        assert!(ended);
        sqlx::query("SELECT 1")
            .execute(&mut w)
            .await
            .expect_err("the session is gone");
        // Its rollback fails too, and leaves nothing queued on the connection.
        let _ = w.rollback().await;
    }
    drop(reader);

    // The next request gets a working connection, not the lost one.
    let mut next = db.reader().await.expect("reader");
    let other: i32 = sqlx::query("SELECT pg_backend_pid()")
        .fetch_one(&mut *next)
        .await
        .expect("the next request's first statement")
        .get(0);
    assert_ne!(other, pid);
    drop(next);
    db.close().await;
}
