//! QR logins under load, over loopback: N simulated phones (the real core, each paired with its
//! own user) each log in N times. One login: the web app creates a QR session → the page would
//! show it (its PNG is fetched, as a page would draw it) → the phone scans it (device-signed
//! claim, signed context verified against pinned keys) → the user approves (signed answer) → the
//! web app reads the approved result with its attributes. Prints sessions per second created and
//! completed, and p50/p99 login latency at 1, 16 and 64 concurrent phones, on SQLite and (with
//! `DATABASE_URL=postgres://…`) PostgreSQL.
//!
//! `cargo bench -p tessera-tests --bench qr_load` (`LOGINS_PER_DEVICE=N`, default 30;
//! `COMMIT_DURABILITY=flushed` or `written` sets the server's `--commit-durability`).

use std::sync::Arc;
use std::time::Instant;

use tessera_core::QrSessionState;
use tessera_protocol::api::CreateQrSession;
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::{Backend, TestDevice, TestServer};

async fn run(backend: Backend, label: &str, devices: usize, logins_per_device: usize) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = tessera_tests::load::pool_size();
            c.commit_durability = tessera_tests::load::commit_durability();
        })
        .await,
    );
    let mut pool = Vec::new();
    for i in 0..devices {
        let user = format!("qr-load-{i}");
        server.user(&user).await;
        let device = TestDevice::new().await;
        device
            .auth
            .pair(&server.pairing_uri(&user).await, None)
            .await
            .expect("pair");
        pool.push(device);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for device in pool {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(logins_per_device);
            for _ in 0..logins_per_device {
                let t0 = Instant::now();
                let created = server
                    .customer
                    .create_qr_session(&CreateQrSession {
                        accessing_ip: Some("203.0.113.7".into()),
                        ..CreateQrSession::default()
                    })
                    .await
                    .expect("create");
                let png = server
                    .customer
                    .qr_image(&created.session_id, "png")
                    .await
                    .expect("png");
                assert!(png.len() > 100);
                let qr = device
                    .auth
                    .authenticate_with_qr(&created.qr_uri)
                    .await
                    .expect("scan");
                let user = qr.users[0].user_id.clone();
                device
                    .auth
                    .approve_qr(&qr, &user, vec![])
                    .await
                    .expect("approve");
                let status = server
                    .customer
                    .qr_session(&created.session_id, 10)
                    .await
                    .expect("status");
                assert_eq!(status.state, QrSessionState::Approved);
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    println!(
        "{label:<9} {devices:>3} phones  {:>6} logins  {:>7.1} sessions/s created and completed  p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        all.p50(),
        all.p99(),
    );
    if let Ok(server) = Arc::try_unwrap(server) {
        server.server.shutdown().await;
    }
}

fn render_figures(n: u32) {
    let uri = "tessera://qr?server=https%3A%2F%2Fauth.example.com&token=Qm9vdHN0cmFwLXRva2VuLWZvci1iZW5jaG1hcmtpbmc";
    let t0 = Instant::now();
    let mut svg_len = 0;
    for _ in 0..n {
        svg_len = tessera_server::qr_render::svg(uri, 320).expect("svg").len();
    }
    let svg_time = t0.elapsed() / n;
    let t0 = Instant::now();
    let mut png_len = 0;
    for _ in 0..n {
        png_len = tessera_server::qr_render::png(uri, 320).expect("png").len();
    }
    let png_time = t0.elapsed() / n;
    println!(
        "QR rendering ({} chars, 320 px): SVG {:.0} µs, {svg_len} bytes; PNG {:.0} µs, {png_len} bytes",
        uri.len(),
        svg_time.as_secs_f64() * 1e6,
        png_time.as_secs_f64() * 1e6
    );
}

fn main() {
    let plan = plan("LOGINS_PER_DEVICE", 30, 2);
    let logins = plan.per_client;
    render_figures(if plan.benchmarking { 200 } else { 3 });
    runtime().block_on(async {
        println!("QR logins over loopback ({logins} per phone)");
        for (backend, label) in backends() {
            for &n in plan.levels {
                run(backend.clone(), label, n, logins).await;
            }
        }
    });
}
