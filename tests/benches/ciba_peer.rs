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
//! Where Tessera's server runs: by default in this process, beside the load generator.
//! `CIBA_SERVER=process` runs the `tessera-server` binary instead, in a process of its own as
//! node-oidc-provider runs (`TESSERA_SERVER_BIN`, else `target/release/tessera-server`; build it
//! first with `cargo build -p tessera-server --release`), with the same limits lifted on its
//! command line; each level then also prints the server process's CPU time per request
//! (node-oidc-provider's is printed in either case).
//!
//! Each level also measures the floor: the same loop against an in-process handler that reads
//! the form and answers a fixed acknowledgement, with no authentication, storage or signature.
//! It is what HTTP over loopback and the load generator cost on this machine, the most any
//! server could reach here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_examples::customer::CustomerApi;
use tessera_examples::relying_party::RelyingParty;
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::server_process::{ServerProcess, cpu_seconds_of, create_app, server_binary};
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

impl Peer {
    /// The peer process's user + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&format!("/proc/{}/stat", self.0.id()))
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
    report(label, clients, Latencies::gather(started, tasks).await)
}

/// A relying party of `server` and its user (`peer-{i}`), with a paired device.
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

/// Requests/s of Tessera on `backend` at `clients` concurrent relying parties, its server in
/// this process.
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
        parties.push(tessera_party(&server, i).await);
    }
    let rate = drive_tessera(parties, label, per_client).await;
    server.server.shutdown().await;
    rate
}

/// Requests/s of Tessera on `backend` at `clients` concurrent relying parties, its server the
/// `bin` binary in a process of its own (`CIBA_SERVER=process`); also prints the server
/// process's CPU time per request.
async fn run_tessera_process(
    bin: &Path,
    backend: Backend,
    label: &str,
    clients: usize,
    per_client: usize,
) -> f64 {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let (database_url, _schema) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("tessera.db").display()),
            None,
        ),
        Backend::Postgres(url) => {
            let (url, guard) = tessera_tests::SchemaGuard::create(&url, "bench").await;
            (url, Some(guard))
        }
    };
    let unlimited = u32::MAX.to_string();
    let args: Vec<String> = [
        // The same limits lifted as for the server in this process (`run_tessera`).
        "--max-unapproved-per-user",
        &unlimited,
        "--max-pending-per-user",
        &unlimited,
        "--max-pending-requests-per-app",
        &unlimited,
        "--database-max-connections",
        &tessera_tests::load::pool_size().to_string(),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let server = ServerProcess::start(bin, &database_url, &args, &dir.path().join("server.log"));
    let app = create_app(bin, &database_url, "CIBA peer");
    let customer = CustomerApi::new(&server.base_url, &app.api_key);
    let mut parties = Vec::new();
    for i in 0..clients {
        parties.push(process_party(&server.base_url, &customer, i).await);
    }
    let cpu_before = server.cpu_seconds();
    let rate = drive_tessera(parties, label, per_client).await;
    print_cpu_per_request(
        label,
        clients,
        server.cpu_seconds() - cpu_before,
        per_client,
    );
    rate
}

/// Prints a level's requests, rate and latencies (as `label`, at `clients` relying parties);
/// answers the rate.
fn report(label: &str, clients: usize, all: Latencies) -> f64 {
    println!(
        "{label:<9} {clients:>3} clients  {:>6} requests  {:>8.1} /s  p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        all.p50(),
        all.p99()
    );
    all.per_second()
}

/// Prints a server process's CPU time per request over a level (`cpu` seconds for `clients`
/// relying parties' `per_client` requests each).
fn print_cpu_per_request(label: &str, clients: usize, cpu: f64, per_client: usize) {
    println!(
        "{label:<9} {clients:>3} clients  server process CPU {:.0} µs a request",
        cpu * 1e6 / (clients * per_client) as f64
    );
}

/// A relying party of the server at `base` and its user, with a paired device: what
/// [`tessera_party`] sets up, through the customer API alone.
async fn process_party(base: &str, customer: &CustomerApi, i: usize) -> (RelyingParty, String) {
    use tessera_examples::relying_party::ClientCredentials;
    use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
    let user = format!("peer-{i}");
    customer.create_user(&user, None).await.expect("user");
    let uri = customer
        .start_pairing(&user, None)
        .await
        .expect("pairing")
        .pairing_uri;
    TestDevice::new()
        .await
        .auth
        .pair(&uri, None)
        .await
        .expect("pair");
    let registered = customer
        .register_ciba_client(&RegisterCibaClient::new(
            format!("Peer RP {i}"),
            DeliveryMode::Poll,
            ClientAuthMethod::ClientSecretBasic,
        ))
        .await
        .expect("register the CIBA client");
    let secret = registered.client_secret.expect("a client secret");
    let rp = RelyingParty::discover(
        base,
        &registered.client_id,
        ClientCredentials::SecretBasic(secret),
    )
    .await
    .expect("discover the server");
    (rp, user)
}

/// Drives `parties` (each a relying party and its user), `per_client` backchannel requests
/// each, all at once; prints and answers the requests/s.
async fn drive_tessera(
    parties: Vec<(RelyingParty, String)>,
    label: &str,
    per_client: usize,
) -> f64 {
    let clients = parties.len();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (rp, user) in parties {
        tasks.push(tokio::spawn(async move {
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
    report(label, clients, Latencies::gather(started, tasks).await)
}

/// The allocator the server binary runs with (`server/src/main.rs`): the server here runs in
/// this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let plan = plan("REQUESTS_PER_CLIENT", 200, 2);
    let per_client = plan.per_client;
    let levels = plan.levels;
    // `CIBA_SERVER=process`: Tessera's server in a process of its own (the binary), else here.
    let own_process: Option<PathBuf> = match std::env::var("CIBA_SERVER").as_deref() {
        Ok("process") => match server_binary() {
            Some(bin) => Some(bin),
            None => return,
        },
        _ => None,
    };
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
            let peer_rate = match peer.as_ref().filter(|_| peer_ready) {
                Some(peer) => {
                    let cpu_before = peer.cpu_seconds();
                    let rate = run_loop(&http, PEER_URL, "node-oidc", n, per_client).await;
                    print_cpu_per_request(
                        "node-oidc",
                        n,
                        peer.cpu_seconds() - cpu_before,
                        per_client,
                    );
                    Some(rate)
                }
                None => None,
            };
            for (backend, label) in backends() {
                let rate = match &own_process {
                    Some(bin) => run_tessera_process(bin, backend, label, n, per_client).await,
                    None => run_tessera(backend, label, n, per_client).await,
                };
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
