//! CIBA backchannel requests per second against a reference provider, measured in the same run:
//! node-oidc-provider (npm `oidc-provider`, everything in memory, poll mode,
//! `client_secret_basic`; the harness is `op.mjs` of the peer folder) and Tessera (durable store:
//! SQLite, and PostgreSQL when `DATABASE_URL` is set; every request is signed for the user's
//! paired device, stored, and pushed).
//!
//! Both are driven by the same loop: N relying parties, each its own client, each posting
//! backchannel requests (`scope=openid&login_hint=…`, HTTP Basic) as fast as the
//! acknowledgements come back. Prints requests/s and p50/p99 per level, and Tessera's rate as a
//! ratio of the peer's at the same level.
//!
//! ```sh
//! d=$(mktemp -d) && cp -r PEER_FOLDER/. "$d" && (cd "$d" && npm install --no-audit --no-fund)
//! PEER_NODE_OIDC_DIR=$d cargo bench -p tessera-tests --bench ciba_peer
//! ```
//! `REQUESTS_PER_CLIENT=N` (default 200). Without `PEER_NODE_OIDC_DIR` only Tessera is measured.
//!
//! Each level also measures the floor: the same loop against an in-process handler that reads
//! the form and answers a fixed acknowledgement, with no authentication, storage or signature.
//! It is what HTTP over loopback and the load generator cost on this machine, the most any
//! server could reach here.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_examples::relying_party::RelyingParty;
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::{Backend, TestDevice, TestServer};

const PEER_URL: &str = "http://127.0.0.1:3000";
const PEER_SECRET: &str = "rp-secret-rp-secret-rp-secret-00";
const WARM_UP_CLIENTS: usize = 8;

/// node-oidc-provider, started from its folder; stopped when dropped.
struct Peer(Child);

impl Peer {
    fn start(dir: &str, clients: usize) -> Option<Self> {
        let child = Command::new("node")
            .arg("op.mjs")
            .current_dir(dir)
            .env("CLIENTS", clients.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self(child))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One backchannel request to `base` (HTTP Basic, the form body), timed to its whole answer.
async fn backchannel_request(
    http: &reqwest::Client,
    base: &str,
    client: &str,
    user: &str,
) -> Duration {
    let t0 = Instant::now();
    let response = http
        .post(format!("{base}/backchannel"))
        .basic_auth(client, Some(PEER_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("scope=openid&login_hint={user}"))
        .send()
        .await
        .expect("backchannel");
    assert!(
        response.status().is_success(),
        "{base}: {}",
        response.status()
    );
    let _ = response.bytes().await;
    t0.elapsed()
}

async fn wait_for_peer(http: &reqwest::Client) -> bool {
    for _ in 0..100 {
        if http
            .get(format!("{PEER_URL}/.well-known/openid-configuration"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The floor's handler: reads the form and answers a fixed acknowledgement.
async fn floor_backchannel(
    axum::extract::Form(form): axum::extract::Form<std::collections::HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "auth_req_id": format!("{:0>55}", form.len()),
        "expires_in": 120,
        "interval": 5,
    }))
}

/// Starts the floor's server on a free loopback port; returns its base URL.
async fn start_floor() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("floor port");
    let address = listener.local_addr().expect("floor address");
    let app = axum::Router::new().route("/backchannel", axum::routing::post(floor_backchannel));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

/// Requests/s of the backchannel at `base` (node-oidc-provider or the floor, printed as
/// `label`) at `clients` concurrent relying parties.
async fn run_loop(
    http: &reqwest::Client,
    base: &str,
    label: &str,
    clients: usize,
    per_client: usize,
) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (http, base) = (http.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let (client, user) = (format!("rp{i}"), format!("user{i}"));
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                latencies.push(backchannel_request(&http, &base, &client, &user).await);
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    println!(
        "{label:<9} {clients:>3} clients  {:>6} requests  {:>8.1} /s  p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        all.p50(),
        all.p99()
    );
    all.per_second()
}

async fn tessera_party(server: &TestServer, i: usize) -> (RelyingParty, String) {
    let user = format!("peer-{i}");
    server.user(&user).await;
    let device = TestDevice::new().await;
    device
        .auth
        .pair(&server.pairing_uri(&user).await, None)
        .await
        .expect("pair");
    let rp = server.poll_mode_relying_party(format!("Peer RP {i}")).await;
    (rp, user)
}

/// Requests/s of Tessera on `backend` at `clients` concurrent relying parties.
async fn run_tessera(backend: Backend, label: &str, clients: usize, per_client: usize) -> f64 {
    let server = TestServer::start_isolated_with(backend, |c| {
        c.max_recent_authentications_per_user = u32::MAX;
        c.max_pending_authentications_per_user = u32::MAX;
        // Nobody answers these requests: at 64 clients they outnumber the default quota.
        c.max_pending_requests_per_application = u32::MAX;
        c.max_connections = tessera_tests::load::pool_size();
    })
    .await;
    let mut parties = Vec::new();
    for i in 0..clients {
        parties.push(Arc::new(tessera_party(&server, i).await));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for party in parties {
        tasks.push(tokio::spawn(async move {
            let (rp, user) = party.as_ref();
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t0 = Instant::now();
                rp.backchannel(&[("scope", "openid"), ("login_hint", user.as_str())])
                    .await
                    .expect("backchannel");
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    println!(
        "{label:<9} {clients:>3} clients  {:>6} requests  {:>8.1} /s  p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        all.p50(),
        all.p99()
    );
    server.server.shutdown().await;
    all.per_second()
}

/// The allocator the server binary runs with (`server/src/main.rs`): the server here runs in
/// this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let plan = plan("REQUESTS_PER_CLIENT", 200, 2);
    let per_client = plan.per_client;
    let levels = plan.levels;
    runtime().block_on(async {
        println!("CIBA backchannel requests against node-oidc-provider ({per_client} per client)");
        // The workspace's reqwest leaves the TLS provider to the program; plain HTTP here, but
        // building a client needs one.
        let _ = tessera_tests::install_crypto_provider();
        let http = reqwest::Client::new();
        let max_clients = levels
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(WARM_UP_CLIENTS);
        let peer = std::env::var("PEER_NODE_OIDC_DIR")
            .ok()
            .and_then(|dir| Peer::start(&dir, max_clients));
        let peer_ready = match &peer {
            Some(_) => wait_for_peer(&http).await,
            None => {
                println!("PEER_NODE_OIDC_DIR not set: node-oidc-provider not measured");
                false
            }
        };
        if peer_ready {
            // Warm the peer's JIT before measuring.
            run_loop(&http, PEER_URL, "node-oidc", WARM_UP_CLIENTS, 50).await;
        }
        let floor = start_floor().await;
        run_loop(&http, &floor, "floor", WARM_UP_CLIENTS, 50).await;
        for &n in levels {
            let floor_rate = run_loop(&http, &floor, "floor", n, per_client).await;
            let peer_rate = if peer_ready {
                Some(run_loop(&http, PEER_URL, "node-oidc", n, per_client).await)
            } else {
                None
            };
            for (backend, label) in backends() {
                let rate = run_tessera(backend, label, n, per_client).await;
                if floor_rate > 0.0 {
                    println!(
                        "{label:<9} {n:>3} clients  Tessera / floor = {:.2}",
                        rate / floor_rate
                    );
                }
                if let Some(peer_rate) = peer_rate.filter(|r| *r > 0.0) {
                    println!(
                        "{label:<9} {n:>3} clients  Tessera / node-oidc-provider = {:.2}",
                        rate / peer_rate
                    );
                }
            }
        }
        drop(peer);
    });
}
