//! End to end: a server whose database pool has fewer connections than requests in flight still
//! answers every one of them. A request that held one pooled connection while it waited for
//! another (reads sent side by side beside the request's own connection) could, with as many
//! such requests as the pool has connections, leave every connection held by a request waiting
//! for one: each would then fail with `service_unavailable` once the pool's acquire timeout
//! passed. Here eight devices pair, then run approval cycles, at once against a pool of two
//! connections, and eight CIBA requests are approved and their tokens polled at once. On SQLite
//! and PostgreSQL; and eight push flows at once on the same pool.

use std::sync::Arc;
use std::time::Duration;

use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::flows::CreateFlowRequest;
use tessera_tests::{Backend, TestServer, approval_cycle_steps, on_each_backend, push_flow_steps};

on_each_backend! {
    more_requests_in_flight_than_connections_all_complete => more_requests_than_connections;
}

async fn more_requests_than_connections(backend: Backend) {
    cycles_beyond_the_pool(backend, false).await;
}

on_each_backend! {
    cycles_under_a_policy_beyond_the_pool_all_complete => cycles_under_a_policy;
}

/// The same under a policy whose rules read the user's history (push counts, recent
/// approvals, groups): those reads run beside the request's own.
async fn cycles_under_a_policy(backend: Backend) {
    cycles_beyond_the_pool(backend, true).await;
}

/// A policy whose first rules read the user's history and do not hold; the last requires a
/// push.
fn history_reading_policy() -> tessera_protocol::policy::PolicyDocument {
    serde_json::from_value(serde_json::json!({
        "networks": {"office": ["203.0.113.0/24"]},
        "rules": [
            {"name": "bursts", "when": {"push_requests": {"at_least": 100000, "window_seconds": 600}},
             "then": {"action": "deny", "reason": "too many"}},
            {"name": "office", "when": {"recent_authentication": {"network": "office", "within_minutes": 60}},
             "then": {"action": "deny", "reason": "from the office"}},
            {"name": "push", "when": {"requests": ["push"]},
             "then": {"action": "require", "methods": ["mobile_push"]}}
        ],
        "default": {"action": "deny", "reason": "no rule matched"}
    }))
    .expect("the policy")
}

/// A server with a pool of two connections.
async fn small_pool_server(backend: Backend) -> TestServer {
    TestServer::start_isolated_with(backend, |c| {
        c.max_connections = 2;
        // A request starved of connections fails fast instead of hanging the test.
        c.database_acquire_timeout = Duration::from_secs(3);
        c.max_recent_authentications_per_user = u32::MAX;
    })
    .await
}

async fn cycles_beyond_the_pool(backend: Backend, with_policy: bool) {
    let server = Arc::new(small_pool_server(backend).await);
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
    if with_policy {
        server
            .customer
            .set_policy(&history_reading_policy())
            .await
            .expect("set the policy");
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

on_each_backend! {
    push_flows_in_flight_beyond_the_pool_all_complete => flows_beyond_the_pool;
}

/// Eight push flows at once on a pool of two, three each: `authenticate` reads what the push
/// is decided from beside the flow's claim, the phone approves with the number shown, and the
/// backend's poll is woken with `MFA_COMPLETED`.
async fn flows_beyond_the_pool(backend: Backend) {
    let server = Arc::new(small_pool_server(backend).await);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let user = format!("flow-pool-{i}");
            let device = server.paired_user(&user).await;
            let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
            for _ in 0..3 {
                let mut request = CreateFlowRequest::new(user.parse().expect("user id"));
                request.number_matching = Some(NumberMatching::Choice);
                let flow = server.customer.create_flow(&request).await.expect("create");
                push_flow_steps(&server.customer, flow.id.as_str(), &device, &enrollment).await;
            }
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        for task in tasks {
            task.await.expect("every flow completes");
        }
    })
    .await;
    assert!(all.is_ok(), "the flows did not complete in time");
}
