//! What the server costs while it waits and per approval, measured on the `tessera-server` binary
//! running as a separate process (so its CPU time, memory and file descriptors are its own), over
//! loopback, on a temporary SQLite file and (with `DATABASE_URL=postgres://…`) on PostgreSQL.
//!
//! 1. **Idle long-polls**: N devices (the real core, each paired with its own user) each hold a
//!    device long-poll (`GET /v1/device/enrollments/{id}/requests?wait=30`). Once every poll is
//!    established (all sent, and the server's and this process's CPU have gone quiet), over a
//!    window: server CPU seconds per second (`/proc/<pid>/stat` utime+stime), server read/write syscalls
//!    per second (`/proc/<pid>/io`: database files and sockets together), database statements
//!    per second (PostgreSQL only: counted exactly, per message, at a small proxy between this
//!    server and PostgreSQL — `Execute` of the extended protocol plus simple `Query`; and the
//!    database-wide `pg_stat_database` transaction count, which includes every other client of
//!    that database), and memory per waiting request (`VmRSS` once all polls wait, minus before
//!    they started, divided by N). A poll that reaches its 30 s deadline does one final read and
//!    the device polls again; how many did so inside the window is printed with the figures.
//! 2. **Wake-up latency**: a relying party waits on `GET /v1/authentications/{id}?wait=30`; the
//!    device pulls the request and approves it. Time from the core's `approve` returning (its
//!    HTTP response plus the core's own work after it) to the waiter's response (negative: the
//!    waiter was answered first), and from calling `approve` to the waiter's response; p50/p99. On one instance (SQLite, PostgreSQL) and across two server
//!    processes on one PostgreSQL database (the device talks to instance A, the waiter waits on
//!    instance B, which learns of the answer through LISTEN/NOTIFY).
//! 3. **Server CPU per approval cycle**: server CPU time (and, on PostgreSQL, statements) over a
//!    fixed number of sequential full cycles (create → device pulls → approves → relying party
//!    reads the result), divided by the cycles.
//! 4. **Levels**: the same at several levels of concurrent devices: cycles per second, p50/p99
//!    cycle latency, the server's CPU per cycle and how many cores it kept busy, and this
//!    process's (the devices' and the relying party's) CPU per cycle. With the load generator in
//!    a process of its own, this tells whether a level's rate falls because the server spends
//!    more per cycle or because the generator does.
//!
//! The binary: `TESSERA_SERVER_BIN`, else `target/release/tessera-server`, else
//! `target/debug/tessera-server` (the path used is printed, with a warning when it is older than
//! `server/src`). Build it first: `cargo build -p tessera-server --release`.
//!
//! `cargo bench -p tessera-tests --bench server_costs`. Sizes (full run / smoke run under
//! `cargo test --all-targets`):
//! - `SERVER_COSTS=idle,wake,cpu,levels` — which parts to run (default all four);
//! - `IDLE_DEVICES` — devices holding a long-poll (10000 / 2);
//! - `IDLE_WINDOW_SECS` — the measuring window (10 / 1);
//! - `PAIR_CONCURRENCY` — pairings in flight while the devices are set up (32);
//! - `WAKE_ROUNDS` — rounds per wake-up figure (200 / 3);
//! - `CPU_CYCLES` — approval cycles for the CPU figure (200 / 3);
//! - `CPU_LEVELS` — the levels of concurrent devices (`1,64,256` / `2`);
//! - `LEVEL_CYCLES` — approval cycles per level (6000 / 4).
//!
//! A user may be asked at most 20 times in 10 minutes (the binary's push-bombing limit), so the
//! wake-up and CPU parts pair one device per 20 rounds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tempfile::TempDir;
use tessera_examples::customer::CustomerApi;
use tessera_protocol::api::CreatedApplication;
use tessera_protocol::authentication::{AuthenticationKind, AuthenticationState};
use tessera_protocol::ids::EnrollmentId;
use tessera_tests::load::{Latencies, runtime};
use tessera_tests::server_process::{ServerProcess, create_app, own_cpu_seconds, server_binary};
use tessera_tests::{TestDevice, approval_cycle, ask};

/// Requests one user may receive in 10 minutes (the server's default).
const PER_USER: usize = 20;

struct Sizes {
    parts: Vec<String>,
    idle_devices: usize,
    idle_window: Duration,
    /// Pause after pairing (PostgreSQL flushes its statistics at most once a second), and the
    /// sampling interval of the "gone quiet" check.
    settle: Duration,
    sample: Duration,
    /// How long to wait at most for the polls to be established.
    establish_cap: Duration,
    pair_concurrency: usize,
    wake_rounds: usize,
    cpu_cycles: usize,
    cpu_levels: Vec<usize>,
    level_cycles: usize,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

impl Sizes {
    fn from_env() -> Self {
        let bench = std::env::args().any(|a| a == "--bench");
        fn pick<T>(bench: bool, full: T, smoke: T) -> T {
            if bench { full } else { smoke }
        }
        Sizes {
            parts: std::env::var("SERVER_COSTS")
                .unwrap_or_else(|_| "idle,wake,cpu,levels".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            idle_devices: env_usize("IDLE_DEVICES", pick(bench, 10_000, 2)),
            idle_window: Duration::from_secs(
                env_usize("IDLE_WINDOW_SECS", pick(bench, 10, 1)) as u64
            ),
            settle: pick(bench, Duration::from_secs(2), Duration::ZERO),
            sample: pick(
                bench,
                Duration::from_millis(500),
                Duration::from_millis(100),
            ),
            establish_cap: pick(bench, Duration::from_secs(120), Duration::from_secs(5)),
            pair_concurrency: env_usize("PAIR_CONCURRENCY", 32),
            wake_rounds: env_usize("WAKE_ROUNDS", pick(bench, 200, 3)),
            cpu_cycles: env_usize("CPU_CYCLES", pick(bench, 200, 3)),
            cpu_levels: std::env::var("CPU_LEVELS")
                .unwrap_or_else(|_| pick(bench, "1,64,256", "2").into())
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|n| *n > 0)
                .collect(),
            level_cycles: env_usize("LEVEL_CYCLES", pick(bench, 6000, 4)),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------------------------------------
// Which database a server process runs on (the process itself: `tessera_tests::server_process`).

/// Which database a server process runs on.
#[derive(Clone)]
enum Db {
    Sqlite,
    Postgres(String),
}

impl Db {
    fn label(&self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counting the statements one server sends to PostgreSQL.

/// Frontend messages seen by the proxy: extended-protocol `Execute` and simple `Query`,
/// `Parse` (a statement prepared: the first use of its text on a connection, or again after
/// the connection's statement cache dropped it) and `Sync` (each answered by a
/// `ReadyForQuery`, as a simple `Query` is: with those, the round trips).
#[derive(Default)]
struct Statements {
    execute: AtomicU64,
    simple: AtomicU64,
    parse: AtomicU64,
    sync: AtomicU64,
    /// With `SQL_TRACE=1`: how many times each statement text was bound or sent (the texts
    /// of prepared statements are learned from their `Parse` messages).
    texts: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Whether the proxy keeps each statement's text (`SQL_TRACE=1`).
fn sql_trace() -> bool {
    std::env::var("SQL_TRACE").is_ok_and(|v| v == "1")
}

impl Statements {
    /// How many `Sync` messages were sent.
    fn syncs(&self) -> u64 {
        self.sync.load(Ordering::Relaxed)
    }

    fn read(&self) -> (u64, u64, u64) {
        (
            self.execute.load(Ordering::Relaxed),
            self.simple.load(Ordering::Relaxed),
            self.parse.load(Ordering::Relaxed),
        )
    }

    /// A copy of the statement texts and their counts (empty without `SQL_TRACE=1`).
    fn texts(&self) -> std::collections::BTreeMap<String, u64> {
        self.texts.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Reads a NUL-terminated string at the start of `b`, and the rest after it.
fn c_string(b: &[u8]) -> (String, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        String::from_utf8_lossy(&b[..end]).into_owned(),
        b.get(end + 1..).unwrap_or(&[]),
    )
}

/// Follows the frontend's message framing: a startup packet (length, code), then typed messages
/// (type byte, length). The server connects through the proxy with `sslmode=disable`, so the
/// stream is plain.
struct FrontendParser {
    startup: bool,
    skip: usize,
    head: Vec<u8>,
    /// With `SQL_TRACE=1`: the body of a `Parse`, `Bind` or `Query` message being read.
    body: Option<(u8, Vec<u8>)>,
    /// Prepared statement names to their texts (this connection's).
    prepared: std::collections::HashMap<String, String>,
}

impl FrontendParser {
    fn new() -> Self {
        FrontendParser {
            startup: true,
            skip: 0,
            head: Vec::with_capacity(8),
            body: None,
            prepared: std::collections::HashMap::new(),
        }
    }

    /// A whole `Parse`, `Bind` or `Query` message body (`SQL_TRACE=1`).
    fn traced(&mut self, kind: u8, body: &[u8], counts: &Statements) {
        let text = match kind {
            b'P' => {
                let (name, rest) = c_string(body);
                let (sql, _) = c_string(rest);
                self.prepared.insert(name, sql);
                return;
            }
            b'B' => {
                let (_portal, rest) = c_string(body);
                let (name, _) = c_string(rest);
                self.prepared.get(&name).cloned().unwrap_or(name)
            }
            _ => c_string(body).0,
        };
        if let Ok(mut texts) = counts.texts.lock() {
            *texts.entry(text).or_default() += 1;
        }
    }

    fn feed(&mut self, mut data: &[u8], counts: &Statements) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                if let Some((_, body)) = &mut self.body {
                    body.extend_from_slice(&data[..n]);
                }
                data = &data[n..];
                if self.skip == 0
                    && let Some((kind, body)) = self.body.take()
                {
                    self.traced(kind, &body, counts);
                }
                continue;
            }
            let head_len = if self.startup { 8 } else { 5 };
            let n = (head_len - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() < head_len {
                return;
            }
            let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if self.startup {
                let code = be32(&self.head[4..8]);
                // SSLRequest and GSSENCRequest are followed by another startup packet.
                self.startup = code == 80877103 || code == 80877104;
                self.skip = be32(&self.head[0..4]).saturating_sub(8);
            } else {
                match self.head[0] {
                    b'E' => counts.execute.fetch_add(1, Ordering::Relaxed),
                    b'Q' => counts.simple.fetch_add(1, Ordering::Relaxed),
                    b'P' => counts.parse.fetch_add(1, Ordering::Relaxed),
                    b'S' => counts.sync.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                self.skip = be32(&self.head[1..5]).saturating_sub(4);
                if sql_trace() && matches!(self.head[0], b'P' | b'B' | b'Q') {
                    if self.skip == 0 {
                        self.traced(self.head[0], &[], counts);
                    } else {
                        self.body = Some((self.head[0], Vec::with_capacity(self.skip)));
                    }
                }
            }
            self.head.clear();
        }
    }
}

/// A counting TCP proxy in front of PostgreSQL; returns the URL to give the server.
fn counting_proxy(database_url: &str) -> (String, Arc<Statements>) {
    let mut url = reqwest::Url::parse(database_url).expect("DATABASE_URL");
    let upstream = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    let counts = Arc::new(Statements::default());
    let counting = Arc::clone(&counts);
    std::thread::spawn(move || {
        for client in listener.incoming().filter_map(Result::ok) {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut client_in, mut server_out) = (client, server);
            let (Ok(mut client_out), Ok(mut server_in)) =
                (client_in.try_clone(), server_out.try_clone())
            else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Both);
            });
            let counts = Arc::clone(&counting);
            std::thread::spawn(move || {
                let mut parser = FrontendParser::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match client_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            parser.feed(&buf[..n], &counts);
                            if server_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = server_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(port)).expect("port");
    let query: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "sslmode")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(query)
        .append_pair("sslmode", "disable");
    (url.to_string(), counts)
}

/// `xact_commit + xact_rollback` and `tup_returned` of the whole database.
async fn pg_database_stats(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (xact_commit + xact_rollback)::BIGINT, tup_returned::BIGINT \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_database")
}

// ---------------------------------------------------------------------------------------------
// One server with an application, and paired devices.

struct Setup {
    server: ServerProcess,
    customer: Arc<CustomerApi>,
    app: CreatedApplication,
    statements: Option<Arc<Statements>>,
    database_url: String,
    dir: TempDir,
}

impl Setup {
    /// A server on `db` (through the counting proxy when `count` and on PostgreSQL).
    fn start(bin: &Path, db: &Db, count: bool) -> Setup {
        let dir = TempDir::new().expect("temp dir");
        let (database_url, statements) = match db {
            Db::Sqlite => (
                format!("sqlite://{}", dir.path().join("tessera.db").display()),
                None,
            ),
            Db::Postgres(url) if count => {
                let (proxied, counts) = counting_proxy(url);
                (proxied, Some(counts))
            }
            Db::Postgres(url) => (url.clone(), None),
        };
        let server = ServerProcess::start(bin, &database_url, &[], &dir.path().join("a.log"));
        let app = create_app(bin, &database_url, "Server costs");
        let customer = Arc::new(CustomerApi::new(&server.base_url, &app.api_key));
        Setup {
            server,
            customer,
            app,
            statements,
            database_url,
            dir,
        }
    }

    /// `n` devices, each paired with its own user, `concurrency` pairings at a time.
    async fn pair(
        &self,
        prefix: &str,
        n: usize,
        concurrency: usize,
    ) -> Vec<(String, TestDevice, EnrollmentId)> {
        futures::stream::iter(0..n)
            .map(|i| {
                let customer = Arc::clone(&self.customer);
                let user = format!("{prefix}-{i}");
                async move {
                    customer.create_user(&user, None).await.expect("user");
                    // On a loaded machine a pairing may time out: try again with a new code.
                    let mut attempt = 1;
                    loop {
                        let uri = customer
                            .start_pairing(&user, None)
                            .await
                            .expect("pairing")
                            .pairing_uri;
                        let device = TestDevice::new().await;
                        match device.auth.pair(&uri, None).await {
                            Ok(_) => {
                                let enrollment =
                                    device.auth.enrollments().await.remove(0).enrollment_id;
                                return (user, device, enrollment);
                            }
                            Err(e) if attempt < 3 => {
                                eprintln!("pairing {user} failed ({e}); trying again");
                                attempt += 1;
                            }
                            Err(e) => panic!("pairing {user} failed three times: {e}"),
                        }
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Idle long-polls.

async fn idle(bin: &Path, db: &Db, sizes: &Sizes) {
    let label = db.label();
    let n = sizes.idle_devices;
    let setup = Setup::start(bin, db, true);
    let t0 = Instant::now();
    let devices = setup.pair("idle", n, sizes.pair_concurrency).await;
    println!(
        "idle      {label:<9} {n} devices paired in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(sizes.settle).await;
    let server = &setup.server;
    let rss_before = server.rss_kib();
    let returned = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, (_, device, enrollment)) in devices.into_iter().enumerate() {
        let (returned, failed, stop) = (
            Arc::clone(&returned),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match device
                    .auth
                    .wait_for_requests(&enrollment, Duration::from_secs(30))
                    .await
                {
                    Ok(_) => returned.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            drop(device);
        }));
        // Do not flood the listen backlog.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Established: every poll has been sent and both processes have gone quiet (the devices
    // signed their requests, the server verified them and subscribed).
    let (mut last_server, mut last_self) = (server.cpu_seconds(), own_cpu_seconds());
    let mut quiet_samples = 0;
    while quiet_samples < 2 && started.elapsed() < sizes.establish_cap {
        tokio::time::sleep(sizes.sample).await;
        let (cpu, own) = (server.cpu_seconds(), own_cpu_seconds());
        // Under 4% of a core (server) and 10% (this process).
        let limit = sizes.sample.as_secs_f64();
        let quiet = cpu - last_server < 0.04 * limit && own - last_self < 0.1 * limit;
        (last_server, last_self) = (cpu, own);
        quiet_samples = if quiet { quiet_samples + 1 } else { 0 };
    }
    let established = started.elapsed();
    if quiet_samples < 2 {
        println!(
            "idle      {label:<9} WARNING: the processes did not go quiet within {} s; measuring anyway",
            sizes.establish_cap.as_secs()
        );
    }
    let rss_after = server.rss_kib();
    let stats_pool = match db {
        Db::Postgres(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .expect("stats connection"),
        ),
        Db::Sqlite => None,
    };
    let pg0 = match &stats_pool {
        Some(pool) => Some(pg_database_stats(pool).await),
        None => None,
    };
    let statements0 = setup.statements.as_ref().map(|s| s.read());
    let (cpu0, io0, returned0) = (
        server.cpu_seconds(),
        server.syscalls(),
        returned.load(Ordering::Relaxed),
    );
    let w0 = Instant::now();
    tokio::time::sleep(sizes.idle_window).await;
    let (cpu1, io1, returned1) = (
        server.cpu_seconds(),
        server.syscalls(),
        returned.load(Ordering::Relaxed),
    );
    let statements1 = setup.statements.as_ref().map(|s| s.read());
    let window = w0.elapsed().as_secs_f64();
    let pg1 = match &stats_pool {
        Some(pool) => Some(pg_database_stats(pool).await),
        None => None,
    };
    stop.store(true, Ordering::Relaxed);
    println!(
        "idle      {label:<9} {n} long-polls established in {:.1} s (server holds {} sockets); window {window:.1} s, {} polls returned (30 s deadline) in it, {} failed in all",
        established.as_secs_f64(),
        server.sockets(),
        returned1 - returned0,
        failed.load(Ordering::Relaxed),
    );
    println!(
        "idle      {label:<9} server CPU {:.4} s/s while {n} long-polls wait",
        (cpu1 - cpu0) / window
    );
    println!(
        "idle      {label:<9} server memory {:.1} KiB per waiting request (RSS {:.1} MiB before, {:.1} MiB with {n} waiting)",
        (rss_after as f64 - rss_before as f64) / n as f64,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
    );
    println!(
        "idle      {label:<9} server syscalls {:.1} reads/s, {:.1} writes/s (database files and sockets together)",
        (io1.0 - io0.0) as f64 / window,
        (io1.1 - io0.1) as f64 / window,
    );
    match (statements0, statements1) {
        (Some((e0, q0, _)), Some((e1, q1, _))) => println!(
            "idle      {label:<9} database statements from this server {:.2}/s ({} Execute + {} simple Query in {window:.1} s, counted at a proxy)",
            ((e1 - e0) + (q1 - q0)) as f64 / window,
            e1 - e0,
            q1 - q0,
        ),
        _ => println!(
            "idle      {label:<9} database statements: not counted on SQLite (in process); see the syscalls"
        ),
    }
    if let (Some((x0, r0)), Some((x1, r1))) = (pg0, pg1) {
        println!(
            "idle      {label:<9} pg_stat_database {:.2} transactions/s, {:.0} tuples returned/s (whole database: includes other clients and this reader)",
            (x1 - x0) as f64 / window,
            (r1 - r0) as f64 / window,
        );
    }
    for task in tasks {
        task.abort();
    }
    drop(setup);
}

// ---------------------------------------------------------------------------------------------
// 2. Wake-up latency.

/// Signed milliseconds, sorted; p50 and p99 by nearest rank.
fn p50_p99(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((values.len() as f64 - 1.0) * p).round() as usize];
    format!("p50 {:.2} ms  p99 {:.2} ms", at(0.5), at(0.99))
}

async fn wake(bin: &Path, db: &Db, two_instances: bool, rounds: usize) {
    let setup = Setup::start(bin, db, false);
    // Instance B: the same database and the same public URL (the devices' pinned identity).
    let other = two_instances.then(|| {
        ServerProcess::start(
            bin,
            &setup.database_url,
            &["--public-url".into(), setup.server.base_url.clone()],
            &setup.dir.path().join("b.log"),
        )
    });
    let waiter_api = Arc::new(match &other {
        Some(b) => CustomerApi::new(&b.base_url, &setup.app.api_key),
        None => CustomerApi::new(&setup.server.base_url, &setup.app.api_key),
    });
    let devices = setup.pair("wake", rounds.div_ceil(PER_USER), 8).await;
    let (mut after_answer, mut after_send) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (user, device, enrollment) = &devices[round / PER_USER];
        let created = setup
            .customer
            .create_authentication(user, &ask(AuthenticationKind::Approval))
            .await
            .expect("create");
        let waiter = {
            let api = Arc::clone(&waiter_api);
            let id = created.authentication_id.clone();
            tokio::spawn(async move {
                let status = api.authentication(&id, 30).await.expect("wait");
                (status, Instant::now())
            })
        };
        let request = device
            .pull_request(enrollment, &created.authentication_id)
            .await;
        // Let the waiter's request reach the server and subscribe.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sent = Instant::now();
        device
            .auth
            .approve(&request, vec![], None)
            .await
            .expect("approve");
        let answered = Instant::now();
        let (status, woke) = waiter.await.expect("waiter");
        assert_eq!(status.state, AuthenticationState::Approved);
        let signed_ms = |from: Instant| {
            if woke >= from {
                (woke - from).as_secs_f64() * 1000.0
            } else {
                -((from - woke).as_secs_f64() * 1000.0)
            }
        };
        after_answer.push(signed_ms(answered));
        after_send.push(signed_ms(sent));
    }
    let label = if two_instances {
        "postgres, device on A, waiter on B"
    } else {
        db.label()
    };
    println!(
        "wake-up   {label}: waiter's response after approve returned {}; after approve was sent {} ({rounds} rounds)",
        p50_p99(after_answer),
        p50_p99(after_send),
    );
    drop(other);
}

// ---------------------------------------------------------------------------------------------
// 3. Server CPU per approval cycle.

async fn cpu_per_cycle(bin: &Path, db: &Db, cycles: usize) {
    let setup = Setup::start(bin, db, true);
    let devices = setup.pair("cpu", cycles.div_ceil(PER_USER), 8).await;
    // Measured from a process that has just paired the devices (pool connections open).
    let statements0 = setup.statements.as_ref().map(|s| s.read());
    let syncs0 = setup.statements.as_ref().map(|s| s.syncs());
    let texts0 = setup.statements.as_ref().map(|s| s.texts());
    let cpu0 = setup.server.cpu_seconds();
    let started = Instant::now();
    for cycle in 0..cycles {
        let (user, device, enrollment) = &devices[cycle / PER_USER];
        approval_cycle(&setup.customer, user, device, enrollment).await;
    }
    let elapsed = started.elapsed();
    let cpu = setup.server.cpu_seconds() - cpu0;
    let statements = match (statements0, setup.statements.as_ref().map(|s| s.read())) {
        (Some((e0, q0, p0)), Some((e1, q1, p1))) => format!(
            ", {:.1} database statements per cycle ({:.1} Execute + {:.1} simple Query), \
             {:.2} Parse, {:.1} round trips (Sync + simple Query)",
            ((e1 - e0) + (q1 - q0)) as f64 / cycles as f64,
            (e1 - e0) as f64 / cycles as f64,
            (q1 - q0) as f64 / cycles as f64,
            (p1 - p0) as f64 / cycles as f64,
            (setup.statements.as_ref().map_or(0, |s| s.syncs()) - syncs0.unwrap_or(0) + (q1 - q0))
                as f64
                / cycles as f64,
        ),
        _ => String::new(),
    };
    if let (Some(before), Some(after)) = (texts0, setup.statements.as_ref().map(|s| s.texts())) {
        for (text, n) in after {
            let n = n - before.get(&text).copied().unwrap_or(0);
            if n > 0 {
                println!(
                    "sql       {:>6.2} per cycle: {}",
                    n as f64 / cycles as f64,
                    text.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
    }
    println!(
        "cpu       {:<9} {:.2} ms server CPU per approval cycle ({cycles} sequential cycles in {:.1} s){statements}",
        db.label(),
        cpu * 1000.0 / cycles as f64,
        elapsed.as_secs_f64(),
    );
}

/// Approval cycles from `level` devices at once (each its own task, running its cycles one after
/// another on devices of its own, at most [`PER_USER`] cycles on each), about `cycles` in all:
/// cycles per second, the server's CPU per cycle and the cores it kept busy, and this process's
/// CPU per cycle.
async fn cpu_at_level(bin: &Path, db: &Db, level: usize, cycles: usize, pair_concurrency: usize) {
    // No statement counting: its relay would add to this process's CPU and to every round trip.
    let setup = Setup::start(bin, db, false);
    let per_worker = cycles.div_ceil(level);
    let devices_per_worker = per_worker.div_ceil(PER_USER);
    let mut devices = setup
        .pair("level", level * devices_per_worker, pair_concurrency)
        .await;
    let mut workers: Vec<Vec<(String, TestDevice, EnrollmentId)>> = Vec::with_capacity(level);
    for _ in 0..level {
        let rest = devices.split_off(devices_per_worker.min(devices.len()));
        workers.push(std::mem::replace(&mut devices, rest));
    }
    let waits0 = ConnectionWaits::scrape(&setup.server.base_url).await;
    let server0 = setup.server.cpu_seconds();
    let own0 = own_cpu_seconds();
    let started = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mine| {
            let customer = Arc::clone(&setup.customer);
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(per_worker);
                for cycle in 0..per_worker {
                    let (user, device, enrollment) = &mine[cycle / PER_USER];
                    let one = Instant::now();
                    approval_cycle(&customer, user, device, enrollment).await;
                    took.push(one.elapsed());
                }
                took
            })
        })
        .collect();
    let mut took = Vec::with_capacity(per_worker * level);
    for task in tasks {
        took.extend(task.await.expect("cycles"));
    }
    let elapsed = started.elapsed();
    let latencies = Latencies::new(took, elapsed);
    let elapsed = elapsed.as_secs_f64();
    let server = setup.server.cpu_seconds() - server0;
    let own = own_cpu_seconds() - own0;
    let done = (per_worker * level) as f64;
    let waits = ConnectionWaits::scrape(&setup.server.base_url)
        .await
        .since(&waits0);
    println!(
        "level     {:<9} {level:>4} devices {:>6} cycles {:>8.1} cycles/s  p50 {}  p99 {}  server {:.3} ms CPU per cycle ({:.2} cores busy)  load generator {:.3} ms CPU per cycle",
        db.label(),
        per_worker * level,
        done / elapsed,
        latencies.p50(),
        latencies.p99(),
        server * 1000.0 / done,
        server / elapsed,
        own * 1000.0 / done,
    );
    println!(
        "          {:<9} {level:>4} devices  {}",
        db.label(),
        waits.summary(done)
    );
}

/// The server's waits for a database connection (`tessera_database_connection_wait_seconds`
/// on `/metrics`: PostgreSQL's request connections, SQLite's writer turn), read before and
/// after a level to tell how much of its latency is the queue for a connection.
#[derive(Debug, Default)]
struct ConnectionWaits {
    pool: String,
    max: f64,
    count: f64,
    sum: f64,
    timeouts: f64,
    /// (upper bound in seconds, cumulative count), `+Inf` last.
    buckets: Vec<(f64, f64)>,
}

impl ConnectionWaits {
    async fn scrape(base_url: &str) -> Self {
        let text = tessera_tests::scrape_metrics(base_url).await;
        let mut waits = ConnectionWaits::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                    .map(|v| v.trim_end_matches(['"', '}']).to_owned())
            };
            match name {
                "tessera_database_connections_max" => {
                    waits.pool = label("pool").unwrap_or_default();
                    waits.max = value;
                }
                "tessera_database_connection_wait_seconds_count" => waits.count = value,
                "tessera_database_connection_wait_seconds_sum" => waits.sum = value,
                "tessera_database_connection_timeouts_total" => waits.timeouts = value,
                "tessera_database_connection_wait_seconds_bucket" => {
                    let bound = match label("le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(b) => b.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    waits.buckets.push((bound, value));
                }
                _ => {}
            }
        }
        waits
    }

    /// The waits between `before` and this reading.
    fn since(mut self, before: &ConnectionWaits) -> Self {
        self.count -= before.count;
        self.sum -= before.sum;
        self.timeouts -= before.timeouts;
        for ((_, after), (_, earlier)) in self.buckets.iter_mut().zip(&before.buckets) {
            *after -= earlier;
        }
        self
    }

    /// The bucket bound under which `share` of the waits fall.
    fn quantile(&self, share: f64) -> f64 {
        let wanted = share * self.count;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= wanted)
            .map_or(f64::INFINITY, |(bound, _)| *bound)
    }

    fn summary(&self, cycles: f64) -> String {
        let over = |bound: f64| {
            let under = self
                .buckets
                .iter()
                .find(|(b, _)| *b >= bound)
                .map_or(self.count, |(_, c)| *c);
            100.0 * (self.count - under) / self.count.max(1.0)
        };
        format!(
            "connection waits ({} of {}): {:.1} a cycle, mean {:.3} ms, p50 <= {} ms, p99 <= {} ms, {:.1} % over 1 ms, {:.1} ms waited a cycle, {} timeouts",
            self.pool,
            self.max,
            self.count / cycles.max(1.0),
            1000.0 * self.sum / self.count.max(1.0),
            1000.0 * self.quantile(0.5),
            1000.0 * self.quantile(0.99),
            over(0.001),
            1000.0 * self.sum / cycles.max(1.0),
            self.timeouts,
        )
    }
}

fn main() {
    let sizes = Sizes::from_env();
    let Some(bin) = server_binary() else {
        return;
    };
    runtime().block_on(async {
        let mut dbs = vec![Db::Sqlite];
        // PostgreSQL is measured in a schema of this run's own, dropped at the end: rows an
        // earlier run left behind would otherwise be swept and expired while this one measures.
        let _schema = tessera_tests::load::postgres_schema_from_env()
            .await
            .map(|(url, guard)| {
                dbs.push(Db::Postgres(url));
                guard
            });
        if sizes.runs("idle") {
            for db in &dbs {
                idle(&bin, db, &sizes).await;
            }
        }
        if sizes.runs("wake") {
            for db in &dbs {
                wake(&bin, db, false, sizes.wake_rounds).await;
            }
            if let Some(db @ Db::Postgres(_)) = dbs.get(1) {
                wake(&bin, db, true, sizes.wake_rounds).await;
            }
        }
        if sizes.runs("cpu") {
            for db in &dbs {
                cpu_per_cycle(&bin, db, sizes.cpu_cycles).await;
            }
        }
        if sizes.runs("levels") {
            for db in &dbs {
                for &level in &sizes.cpu_levels {
                    // Each level on empty tables: on PostgreSQL a schema of its own, dropped after
                    // it (SQLite's database is a new file for every server started).
                    let (db, _level_schema) = match db {
                        Db::Sqlite => (Db::Sqlite, None),
                        Db::Postgres(_) => {
                            let Some((url, guard)) =
                                tessera_tests::load::postgres_schema_from_env().await
                            else {
                                continue;
                            };
                            (Db::Postgres(url), Some(guard))
                        }
                    };
                    cpu_at_level(&bin, &db, level, sizes.level_cycles, sizes.pair_concurrency)
                        .await;
                }
            }
        }
    });
}
