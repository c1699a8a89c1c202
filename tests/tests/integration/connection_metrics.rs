//! End to end: `/metrics` shows the database connections requests wait for, while they wait. A
//! lock taken from outside the server (a PostgreSQL table lock, a SQLite write transaction on
//! the file) holds the requests that write; with a pool of two connections (PostgreSQL) or the
//! one writer (SQLite), the next ones queue, and the scrape taken meanwhile shows them waiting
//! and every connection in use. One that waits past the acquire timeout is answered 503 and
//! counted; once the lock is gone every other request completes, nothing waits, nothing stays
//! in use, and the histogram counts every wait.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use tessera_examples::customer::CustomerApiError;
use tessera_protocol::authentication::AuthenticationKind;
use tessera_protocol::error::ErrorCode;
use tessera_tests::{
    Backend, TestServer, ask, metric_sample as sample, on_each_backend, scrape_metrics as scrape,
};

on_each_backend! {
    requests_waiting_for_a_connection_are_shown_and_counted => waits_shown_and_counted;
}

/// Scrapes until `ready` holds for the exposition (at most ten seconds), answering the last one.
async fn scrape_until(base_url: &str, ready: impl Fn(&str) -> bool) -> String {
    let mut metrics = scrape(base_url).await;
    for _ in 0..200 {
        if ready(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = scrape(base_url).await;
    }
    metrics
}

/// A lock that holds the server's writes until released, taken on a connection of the test's
/// own.
enum OutsideLock {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl OutsideLock {
    async fn take(server: &TestServer) -> OutsideLock {
        match &server.backend {
            Backend::Postgres(_) => {
                // The server's own schema (its URL sets the `search_path`).
                let mut conn = sqlx::PgConnection::connect(&server.config().database_url)
                    .await
                    .expect("connect");
                sqlx::query("BEGIN")
                    .execute(&mut conn)
                    .await
                    .expect("begin");
                sqlx::query("LOCK TABLE authentications IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .expect("lock");
                OutsideLock::Postgres(conn)
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&server.config().database_url)
                    .await
                    .expect("connect");
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .expect("begin");
                OutsideLock::Sqlite(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            OutsideLock::Postgres(mut conn) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("end");
            }
            OutsideLock::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("end");
            }
        }
    }
}

async fn waits_shown_and_counted(backend: Backend) {
    let sqlite = backend == Backend::Sqlite;
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = 2;
            c.database_acquire_timeout = Duration::from_secs(1);
        })
        .await,
    );
    let _device = server.paired_user("waiter").await;
    let (pool, max) = if sqlite {
        ("writer", 1.0)
    } else {
        ("requests", 2.0)
    };
    let in_use = format!("tessera_database_connections{{pool=\"{pool}\",state=\"in_use\"}}");
    let idle = format!("tessera_database_connections{{pool=\"{pool}\",state=\"idle\"}}");
    let waiting = format!("tessera_database_connection_waiting{{pool=\"{pool}\"}}");
    let timeouts = format!("tessera_database_connection_timeouts_total{{pool=\"{pool}\"}}");
    let count = format!("tessera_database_connection_wait_seconds_count{{pool=\"{pool}\"}}");
    let at_once =
        format!("tessera_database_connection_wait_seconds_bucket{{le=\"0.0001\",pool=\"{pool}\"}}");
    let all =
        format!("tessera_database_connection_wait_seconds_bucket{{le=\"+Inf\",pool=\"{pool}\"}}");

    let before = scrape(&server.base_url).await;
    assert_eq!(
        sample(
            &before,
            &format!("tessera_database_connections_max{{pool=\"{pool}\"}}")
        ),
        Some(max),
        "{before}"
    );
    assert_eq!(sample(&before, &waiting), Some(0.0), "{before}");
    assert_eq!(sample(&before, &timeouts), Some(0.0), "{before}");
    let waits_before = sample(&before, &count).expect("the wait count");
    assert!(waits_before > 0.0, "setting up took connections: {before}");
    assert_eq!(sample(&before, &all), Some(waits_before), "{before}");

    let lock = OutsideLock::take(&server).await;
    // Two requests hold the connections (PostgreSQL) or the writer's turn (SQLite) behind the
    // lock; the others queue.
    let mut creates = Vec::new();
    for _ in 0..4 {
        let server = Arc::clone(&server);
        creates.push(tokio::spawn(async move {
            server
                .customer
                .create_authentication("waiter", &ask(AuthenticationKind::Approval))
                .await
        }));
    }
    let during = scrape_until(&server.base_url, |m| {
        sample(m, &waiting).unwrap_or(0.0) >= 1.0 && sample(m, &in_use) == Some(max)
    })
    .await;
    assert!(
        sample(&during, &waiting).unwrap_or(0.0) >= 1.0,
        "requests wait for a connection: {during}"
    );
    assert_eq!(sample(&during, &in_use), Some(max), "{during}");
    assert_eq!(sample(&during, &idle), Some(0.0), "{during}");
    // Past the acquire timeout, those still queued give up.
    let after_timeout = scrape_until(&server.base_url, |m| {
        sample(m, &timeouts).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(
        sample(&after_timeout, &timeouts).unwrap_or(0.0) >= 1.0,
        "a wait past the acquire timeout is counted: {after_timeout}"
    );
    lock.release().await;

    let mut refused = 0;
    for create in creates {
        match create.await.expect("the request's task") {
            Ok(_) => {}
            Err(CustomerApiError::Api { status, code, .. }) => {
                assert_eq!((status, code), (503, ErrorCode::ServiceUnavailable));
                refused += 1;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert!(refused >= 1, "a request waited past the acquire timeout");
    assert!(refused < 4, "the requests that held a connection completed");

    let after = scrape_until(&server.base_url, |m| {
        sample(m, &in_use) == Some(0.0) && sample(m, &waiting) == Some(0.0)
    })
    .await;
    assert_eq!(sample(&after, &waiting), Some(0.0), "{after}");
    assert_eq!(sample(&after, &in_use), Some(0.0), "{after}");
    assert_eq!(
        sample(&after, &timeouts),
        Some(f64::from(refused)),
        "each request answered 503 is one timeout: {after}"
    );
    let waits_after = sample(&after, &count).expect("the wait count");
    assert_eq!(sample(&after, &all), Some(waits_after), "{after}");
    assert!(
        waits_after > waits_before,
        "the requests that got a connection were counted: {after}"
    );
    // The ones that queued behind the lock waited longer than the first bucket.
    let slow = waits_after - sample(&after, &at_once).expect("the first bucket");
    assert!(slow >= 1.0, "a wait behind the lock is a long one: {after}");
    let sum = sample(
        &after,
        &format!("tessera_database_connection_wait_seconds_sum{{pool=\"{pool}\"}}"),
    )
    .expect("the sum");
    assert!(sum > 0.05, "{after}");
}
