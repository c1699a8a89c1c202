//! Pairing latency over loopback: 1,000 complete pairings (the backend starts a pairing, a fresh
//! device pairs through the real core, reply verified, state written), on SQLite and, when
//! `DATABASE_URL` points at PostgreSQL, on PostgreSQL. Prints median, p99 and throughput.
//!
//! `cargo bench -p tessera-tests --bench pairing_load` (`PAIRINGS=N` to change the count).

use std::time::Instant;

use tessera_tests::load::{backends, ms, percentile, plan, runtime};
use tessera_tests::{Backend, TestDevice, TestServer};

async fn run(backend: Backend, label: &str, n: usize) {
    let server = TestServer::start_isolated_with(backend, |_| {}).await;
    // Devices are created before timing: key store and state folders are ready, like an
    // installed app.
    let mut devices = Vec::with_capacity(n);
    for _ in 0..n {
        devices.push(TestDevice::new().await);
    }
    let mut pair_only = Vec::with_capacity(n);
    let mut full = Vec::with_capacity(n);
    let started = Instant::now();
    for (i, device) in devices.iter().enumerate() {
        let user = format!("load-user-{i}");
        let t0 = Instant::now();
        server
            .customer
            .create_user(&user, None)
            .await
            .expect("user");
        let uri = server
            .customer
            .start_pairing(&user, None)
            .await
            .expect("pairing")
            .pairing_uri;
        let t1 = Instant::now();
        device.auth.pair(&uri, None).await.expect("pair");
        let t2 = Instant::now();
        pair_only.push(t2 - t1);
        full.push(t2 - t0);
    }
    let elapsed = started.elapsed();
    pair_only.sort();
    full.sort();
    println!(
        "{label:<10} {n} pairings in {:.2} s ({:.0} pairings/s, one at a time)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{label:<10} device pair call       median {}  p99 {}  max {}",
        ms(percentile(&pair_only, 0.5)),
        ms(percentile(&pair_only, 0.99)),
        ms(*pair_only.last().expect("n > 0"))
    );
    println!(
        "{label:<10} create user + start + pair  median {}  p99 {}",
        ms(percentile(&full, 0.5)),
        ms(percentile(&full, 0.99))
    );
    server.server.shutdown().await;
}

fn main() {
    let n = plan("PAIRINGS", 1000, 10).per_client;
    runtime().block_on(async {
        println!("pairing latency over loopback ({n} pairings per backend)");
        for (backend, label) in backends() {
            run(backend, label, n).await;
        }
    });
}
