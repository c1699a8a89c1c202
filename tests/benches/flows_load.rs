//! Authentication flows under load, over loopback: N simulated phones (the real core, each paired
//! with its own user) each complete flows one after another, two kinds:
//!
//! - **push**: the backend creates a flow, `authenticate` (a push with number matching), the
//!   phone pulls and approves with the number, the backend's `poll` is woken with
//!   `MFA_COMPLETED` (3 flow API calls);
//! - **seamless**: the backend creates a flow, the phone signs its nonce
//!   (`create_authorization_payload`), `authenticate` with it completes the flow (2 flow API
//!   calls, no push).
//!
//! Prints flows per second, flow API operations per second and p50/p99 flow latency at each
//! level of concurrent phones, on SQLite and (with `DATABASE_URL=postgres://…`) PostgreSQL.
//!
//! `cargo bench -p tessera-tests --bench flows_load` (`FLOWS_PER_DEVICE=N`, default 30;
//! `LOAD_LEVELS=1,16,64`; `COMMIT_DURABILITY=flushed` or `written` sets the server's
//! `--commit-durability`).

use std::sync::Arc;
use std::time::Instant;

use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::flows::{CreateFlowRequest, FlowAction, FlowStatus};
use tessera_protocol::ids::EnrollmentId;
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::{Backend, TestDevice, TestServer, push_flow_steps};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Push,
    Seamless,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Push => "push",
            Kind::Seamless => "seamless",
        }
    }

    /// Flow API calls per flow (create, actions).
    fn operations(self) -> usize {
        match self {
            Kind::Push => 3,
            Kind::Seamless => 2,
        }
    }
}

async fn one_flow(
    server: &TestServer,
    device: &TestDevice,
    user: &str,
    enrollment: &EnrollmentId,
    kind: Kind,
) {
    let mut request = CreateFlowRequest::new(user.parse().expect("user id"));
    request.number_matching = Some(NumberMatching::Choice);
    let flow = server.customer.create_flow(&request).await.expect("create");
    let id = flow.id.to_string();
    match kind {
        Kind::Push => push_flow_steps(&server.customer, &id, device, enrollment).await,
        Kind::Seamless => {
            let signed = device
                .auth
                .create_authorization_payload(enrollment, &flow.authorization_nonce)
                .await
                .expect("sign");
            let done = server
                .customer
                .flow_action(
                    &id,
                    &FlowAction::Authenticate {
                        mobile_payload: None,
                        authorization_payload: Some(signed),
                    },
                )
                .await
                .expect("authenticate");
            assert_eq!(done.status, FlowStatus::MfaCompleted);
        }
    }
}

async fn run(backend: Backend, label: &str, devices: usize, flows_per_device: usize, kind: Kind) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = tessera_tests::load::pool_size();
            c.max_pending_authentications_per_user = 100;
            c.commit_durability = tessera_tests::load::commit_durability();
        })
        .await,
    );
    let mut pool = Vec::new();
    for i in 0..devices {
        let user = format!("flows-load-{}-{i}", kind.label());
        server.user(&user).await;
        let device = TestDevice::new().await;
        let enrollment = device
            .auth
            .pair(&server.pairing_uri(&user).await, None)
            .await
            .expect("pair")
            .enrollment_id;
        pool.push((user, device, enrollment));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, device, enrollment) in pool {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(flows_per_device);
            for _ in 0..flows_per_device {
                let t0 = Instant::now();
                one_flow(&server, &device, &user, &enrollment, kind).await;
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    println!(
        "{label:<9} {:<8} {devices:>3} phones  {:>6} flows  {:>7.1} flows/s  {:>7.1} flow API ops/s  p50 {}  p99 {}",
        kind.label(),
        all.count(),
        all.per_second(),
        all.per_second() * kind.operations() as f64,
        all.p50(),
        all.p99(),
    );
    if let Ok(server) = Arc::try_unwrap(server) {
        server.server.shutdown().await;
    }
}

fn main() {
    let plan = plan("FLOWS_PER_DEVICE", 30, 2);
    let flows = plan.per_client;
    runtime().block_on(async {
        println!("Authentication flows over loopback ({flows} per phone)");
        for (backend, label) in backends() {
            for kind in [Kind::Push, Kind::Seamless] {
                for &n in plan.levels {
                    run(backend.clone(), label, n, flows, kind).await;
                }
            }
        }
    });
}
