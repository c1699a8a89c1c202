//! CIBA under load, over loopback, on SQLite and (with `DATABASE_URL=postgres://…`) PostgreSQL.
//!
//! 1. Backchannel requests per second: N relying parties (each its own client, authenticated
//!    with `client_secret_basic`) start backchannel authentications for their own users as fast
//!    as the acknowledgements come back; every request is signed for and stored for the user's
//!    device.
//! 2. End to end, backchannel request → tokens, with a device approving automatically (the
//!    real core: it pulls the signed request, verifies it, approves with user verification):
//!    - ping mode: the relying party waits for the ping, then fetches the tokens;
//!    - poll mode: the relying party polls every `interval` (1 s here), so its latency is
//!      bound by the interval.
//!
//! Prints requests/s and p50/p99 latencies at 1, 16 and 64 concurrent relying parties.
//! `cargo bench -p tessera-tests --bench ciba_load` (`CYCLES_PER_CLIENT=N`, default 20).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_examples::notification_receiver::NotificationReceiver;
use tessera_examples::relying_party::{ClientCredentials, RelyingParty};
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::{Backend, TestDevice, TestServer};

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Backchannel,
    Ping,
    Poll,
}

struct Party {
    user: String,
    device: Option<TestDevice>,
    rp: RelyingParty,
    receiver: Option<NotificationReceiver>,
}

async fn party(server: &TestServer, i: usize, scenario: Scenario) -> Party {
    let user = format!("ciba-{i}");
    server.user(&user).await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri(&user).await, None)
        .await
        .expect("pair");
    let receiver = if scenario == Scenario::Ping {
        Some(NotificationReceiver::start().await.expect("receiver"))
    } else {
        None
    };
    let registered = server
        .customer
        .register_ciba_client(&RegisterCibaClient {
            client_name: format!("Load RP {i}"),
            backchannel_token_delivery_mode: if scenario == Scenario::Ping {
                DeliveryMode::Ping
            } else {
                DeliveryMode::Poll
            },
            backchannel_client_notification_endpoint: receiver.as_ref().map(|r| r.url("/ping")),
            token_endpoint_auth_method: ClientAuthMethod::ClientSecretBasic,
            jwks: None,
            backchannel_authentication_request_signing_alg: None,
            backchannel_user_code_parameter: false,
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
        })
        .await
        .expect("register");
    let rp = RelyingParty::discover(
        &server.base_url,
        &registered.client_id,
        ClientCredentials::SecretBasic(registered.client_secret.expect("secret")),
    )
    .await
    .expect("discover");
    Party {
        user,
        device: (scenario != Scenario::Backchannel).then_some(device),
        rp,
        receiver,
    }
}

async fn cycle(p: &Party, scenario: Scenario) -> Duration {
    let t0 = Instant::now();
    let mut params = vec![("scope", "openid"), ("login_hint", p.user.as_str())];
    if scenario == Scenario::Ping {
        params.push(("client_notification_token", "load-notification-token"));
    }
    let ack = p.rp.backchannel(&params).await.expect("backchannel");
    if scenario == Scenario::Backchannel {
        return t0.elapsed();
    }
    let device = p.device.as_ref().expect("device");
    let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
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
    match scenario {
        Scenario::Ping => {
            let receiver = p.receiver.as_ref().expect("receiver");
            receiver
                .next(Duration::from_secs(30))
                .await
                .expect("a ping");
            p.rp.token(&ack.auth_req_id).await.expect("tokens");
        }
        _ => {
            p.rp.poll(&ack).await.expect("tokens");
        }
    }
    t0.elapsed()
}

async fn run(backend: Backend, label: &str, scenario: Scenario, parties: usize, cycles: usize) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_recent_authentications_per_user = u32::MAX;
            c.max_pending_authentications_per_user = u32::MAX;
            c.max_connections = tessera_tests::load::pool_size();
            c.ciba_poll_interval = 1;
            c.ciba_allow_loopback_notifications = true;
        })
        .await,
    );
    let mut all_parties = Vec::new();
    for i in 0..parties {
        all_parties.push(party(&server, i, scenario).await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in all_parties {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(cycles);
            for _ in 0..cycles {
                latencies.push(cycle(&p, scenario).await);
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    let what = match scenario {
        Scenario::Backchannel => "backchannel",
        Scenario::Ping => "ping e2e",
        Scenario::Poll => "poll e2e",
    };
    println!(
        "{label:<9} {what:<12} {parties:>3} clients  {:>5} requests  {:>7.1} /s  p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        all.p50(),
        all.p99(),
    );
    if let Ok(server) = Arc::try_unwrap(server) {
        server.server.shutdown().await;
    }
}

fn main() {
    let plan = plan("CYCLES_PER_CLIENT", 20, 1);
    let cycles = plan.per_client;
    runtime().block_on(async {
        println!("CIBA over loopback ({cycles} requests per client)");
        for (backend, label) in backends() {
            for scenario in [Scenario::Backchannel, Scenario::Ping, Scenario::Poll] {
                for &n in plan.levels {
                    run(backend.clone(), label, scenario, n, cycles).await;
                }
            }
        }
    });
}
