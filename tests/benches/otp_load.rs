//! Server OTP verifications under load, over loopback: N concurrent clients, each verifying
//! passcodes for its own user through `POST /v1/users/{id}/otp/verify`. Each user has an OATH
//! HOTP token registered with a random seed, so every verification is a fresh, accepted code
//! (the server reads the user, the seeds and tokens, computes the HMAC, moves the counter with a
//! conditional update and clears the failure count). Prints verifications per second and
//! p50/p99 latency at 1, 16 and 64 clients, on SQLite and (with `DATABASE_URL=postgres://…`)
//! PostgreSQL.
//!
//! `cargo bench -p tessera-tests --bench otp_load` (`VERIFICATIONS_PER_CLIENT=N`, default 200).

use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;
use tessera_protocol::api::{OtpAlgorithm, OtpTokenKind, RegisterOtpToken};
use tessera_protocol::otp::{OtpHash, hotp};
use tessera_tests::load::{Latencies, backends, plan, runtime};
use tessera_tests::{Backend, TestServer};

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

async fn run(backend: Backend, label: &str, clients: usize, per_client: usize) {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_connections = tessera_tests::load::pool_size();
        })
        .await,
    );
    let mut users = Vec::new();
    for i in 0..clients {
        let user = format!("otp-load-{i}");
        server.user(&user).await;
        let mut seed = vec![0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        server
            .customer
            .register_otp_token(
                &user,
                &RegisterOtpToken {
                    kind: OtpTokenKind::OathToken,
                    secret: base32(&seed),
                    algorithm: OtpAlgorithm::Sha1,
                    digits: None,
                    period: None,
                    counter: Some(0),
                },
            )
            .await
            .expect("register token");
        users.push((user, seed));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, seed) in users {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for counter in 0..per_client as u64 {
                let code = hotp(&seed, OtpHash::Sha1, 6, counter).expect("code");
                let t0 = Instant::now();
                server
                    .customer
                    .verify_otp(&user, &code)
                    .await
                    .expect("verified");
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let all = Latencies::gather(started, tasks).await;
    println!(
        "{label:<9} {clients:>3} clients  {:>6} verifications  {:>7.1} verifications/s  p50 {}  p99 {}",
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
    let plan = plan("VERIFICATIONS_PER_CLIENT", 200, 3);
    let per_client = plan.per_client;
    runtime().block_on(async {
        println!("server OTP verifications over loopback ({per_client} per client)");
        for (backend, label) in backends() {
            for &n in plan.levels {
                run(backend.clone(), label, n, per_client).await;
            }
        }
    });
}
