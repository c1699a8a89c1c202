//! End to end: a server whose database pool has fewer connections than requests in flight still
//! answers every one of them. A request that held one pooled connection while it waited for
//! another (reads sent side by side beside the request's own connection) could, with as many
//! such requests as the pool has connections, leave every connection held by a request waiting
//! for one: each would then fail with `service_unavailable` once the pool's acquire timeout
//! passed. Here eight devices pair, then run approval cycles, at once against a pool of two
//! connections, and eight CIBA requests are approved and their tokens polled at once. On SQLite
//! and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use tessera_tests::{Backend, TestServer, approval_cycle_steps, on_each_backend};

on_each_backend! {
    more_requests_in_flight_than_connections_all_complete => more_requests_than_connections;
}

async fn more_requests_than_connections(backend: Backend) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = 2;
            // A request starved of connections fails fast instead of hanging the test.
            c.database_acquire_timeout = Duration::from_secs(3);
            c.max_recent_authentications_per_user = u32::MAX;
        })
        .await,
    );
    // The eight pair at once too.
    let mut pairings = Vec::new();
    for i in 0..8 {
        let server = Arc::clone(&server);
        pairings.push(tokio::spawn(async move {
            let user = format!("pool-{i}");
            let device = server.paired_user(&user).await;
            (user, device)
        }));
    }
    let mut devices = Vec::new();
    for pairing in pairings {
        devices.push(pairing.await.expect("every pairing completes"));
    }
    let mut tasks = Vec::new();
    for (user, device) in devices {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
            for _ in 0..4 {
                approval_cycle_steps(&server.customer, &user, &device, &enrollment).await;
            }
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        for task in tasks {
            task.await.expect("every cycle completes");
        }
    })
    .await;
    assert!(all.is_ok(), "the cycles did not complete in time");
}

on_each_backend! {
    ciba_requests_in_flight_beyond_the_pool_all_complete => ciba_beyond_the_pool;
}

/// Eight CIBA requests (poll mode) at once on a pool of two: each is approved by its user's
/// device and its tokens are polled.
async fn ciba_beyond_the_pool(backend: Backend) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = 2;
            c.database_acquire_timeout = Duration::from_secs(3);
            c.max_recent_authentications_per_user = u32::MAX;
            c.ciba_poll_interval = 1;
        })
        .await,
    );
    let rp = Arc::new(server.poll_mode_relying_party("Small pool RP").await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (server, rp) = (Arc::clone(&server), Arc::clone(&rp));
        tasks.push(tokio::spawn(async move {
            let user = format!("ciba-pool-{i}");
            let device = server.paired_user(&user).await;
            let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
            for _ in 0..2 {
                let ack = rp
                    .backchannel(&[("scope", "openid"), ("login_hint", user.as_str())])
                    .await
                    .expect("backchannel");
                let request = device
                    .auth
                    .wait_for_requests(&enrollment, Duration::from_secs(10))
                    .await
                    .expect("pull")
                    .into_iter()
                    .next()
                    .expect("the request");
                device
                    .auth
                    .approve(&request, vec!["fpt".into()], None)
                    .await
                    .expect("approve");
                rp.poll(&ack).await.expect("tokens");
            }
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        for task in tasks {
            task.await.expect("every request completes");
        }
    })
    .await;
    assert!(all.is_ok(), "the requests did not complete in time");
}
