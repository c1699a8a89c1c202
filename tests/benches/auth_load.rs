//! Authentication cycles under load, over loopback: N simulated devices (the real core, each
//! paired with its own user) run full cycles concurrently. One cycle: the relying party creates
//! an approval → the device pulls it (signed request verified against pinned keys) → the device
//! approves (signed answer) → the relying party reads the approved result with its attributes.
//! Prints cycles per second and p50/p99 cycle latency at 1, 16, 64, 128 and 256 concurrent
//! devices, on SQLite and (with `DATABASE_URL=postgres://…`) PostgreSQL.
//!
//! `cargo bench -p tessera-tests --bench auth_load` (`CYCLES_PER_DEVICE=N`, default 50;
//! `LOAD_LEVELS=1,16` runs only those levels). Under `cargo test --all-targets` it makes a smoke
//! run of 2 cycles at 1 and 2 devices.
//!
//! To compare the levels with each other (how much of the best level's rate the high levels
//! keep), `CYCLES_PER_LEVEL=N` gives every level about N cycles, shared among its devices (at
//! least one each), so that each is measured over a similar time (with `CYCLES_PER_DEVICE` a
//! 16-device level runs for a second while a 256-device one runs for fifteen), and
//! `LOAD_ROUNDS=N` runs the levels N times over, one round after the other; a summary then
//! gives each level's median rate and its share of the best level's median, over the whole
//! runs and while every device ran (`steady`: from the last device's first completed cycle to
//! the first device's last one, leaving out the ramp-up and the drain; each level line prints it
//! too). Give each level at least 12,000 cycles for that comparison
//! (`LOAD_LEVELS=16,64,128,256 CYCLES_PER_LEVEL=12000 LOAD_ROUNDS=2`): at 3,000 a level runs two
//! to three seconds, a 256-device level holds about twelve cycles per device, and the same
//! binary's 256-device share moves between 73 and 97 % from run to run (docs/benchmarks.md).
//!
//! Every level (and round) starts from an empty database: a new SQLite file, or on PostgreSQL a
//! new schema dropped after it (`TestServer::start_isolated_with`), so a later level does not
//! run on the rows of the earlier ones.
//!
//! `COMMIT_DURABILITY=flushed` or `written` sets the server's `--commit-durability` (unset: each
//! engine's own way).
//!
//! `ENGINE_RATIO_ROUNDS=N` (with `DATABASE_URL` set) compares the engines instead: N rounds,
//! each running every level and policy on SQLite and on PostgreSQL back to back (SQLite first
//! in odd rounds, PostgreSQL first in even ones), printing each round's PostgreSQL p50 over
//! SQLite's, then each level's median ratio over the rounds with its lowest and highest. Run one
//! engine after the other for a whole run, the machine's drift within a sitting (runs of one
//! binary on one engine moved by a tenth) lands on one engine only; back to back, it lands on
//! both (`ENGINE_RATIO_ROUNDS=6 LOAD_LEVELS=1 CYCLES_PER_LEVEL=1500 COMMIT_DURABILITY=flushed`).
//!
//! Each level runs twice: without a policy, and with a 50-rule authentication policy that every
//! request is decided by (49 rules that do not match, the last requires a push; see
//! `docs/policy.md`), so the cost of the policy shows as the difference.

use std::sync::Arc;
use std::time::Instant;

use tessera_tests::load::{Latencies, backends, plan, runtime, steady_rate};
use tessera_tests::{Backend, TestDevice, TestServer, approval_cycle_steps};

/// A 50-rule policy: 49 rules with conditions that do not hold for the cycles (some read the
/// user's recent authentications and push counts), the last requiring a push.
fn fifty_rule_policy() -> tessera_protocol::policy::PolicyDocument {
    let conditions = [
        serde_json::json!({"networks": ["office"]}),
        serde_json::json!({"requests": ["transaction"]}),
        serde_json::json!({"platforms": ["ios"]}),
        serde_json::json!({"os_version_below": "12"}),
        serde_json::json!({"rooted": true}),
        serde_json::json!({"push_requests": {"at_least": 100000, "window_seconds": 600}}),
        serde_json::json!({"recent_authentication": {"network": "office", "within_minutes": 60}}),
    ];
    let mut rules: Vec<_> = (0..49)
        .map(|n| {
            serde_json::json!({"name": format!("rule {n}"), "when": conditions[n % conditions.len()],
                               "then": {"action": "deny", "reason": "refused"}})
        })
        .collect();
    rules.push(
        serde_json::json!({"name": "push", "when": {"requests": ["push"]},
                                  "then": {"action": "require", "methods": ["mobile_push"]}}),
    );
    serde_json::from_value(serde_json::json!({
        "networks": {"office": ["203.0.113.0/24"]},
        "rules": rules,
        "default": {"action": "deny", "reason": "no rule matched"}
    }))
    .expect("the policy")
}

async fn run_with(
    backend: Backend,
    label: &str,
    devices: usize,
    cycles_per_device: usize,
    with_policy: bool,
) -> Rates {
    let server = Arc::new(
        TestServer::start_isolated_with(backend, |c| {
            c.max_recent_authentications_per_user = u32::MAX;
            c.max_connections = tessera_tests::load::pool_size();
            c.commit_durability = tessera_tests::load::commit_durability();
        })
        .await,
    );
    let mut pool = Vec::new();
    for i in 0..devices {
        let user = format!("load-{i}");
        server.user(&user).await;
        let device = TestDevice::new().await;
        device
            .auth
            .pair(&server.pairing_uri(&user).await, None)
            .await
            .expect("pair");
        pool.push((user, device));
    }
    // Saved once the devices are paired: its default denies what no rule matches.
    if with_policy {
        server
            .customer
            .set_policy(&fifty_rule_policy())
            .await
            .expect("set the policy");
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (user, device) in pool {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let enrollment = device.auth.enrollments().await.remove(0).enrollment_id;
            let mut latencies = Vec::with_capacity(cycles_per_device);
            let mut completions = Vec::with_capacity(cycles_per_device);
            let mut steps: [Vec<std::time::Duration>; 4] = Default::default();
            for _ in 0..cycles_per_device {
                let t0 = Instant::now();
                let took =
                    approval_cycle_steps(&server.customer, &user, &device, &enrollment).await;
                let done = Instant::now();
                latencies.push(done - t0);
                completions.push(done);
                for (list, step) in steps.iter_mut().zip(took) {
                    list.push(step);
                }
            }
            if devices == 1 {
                // One device: where a cycle's time goes, request by request (p50 of each).
                let p50 = |list: &mut Vec<std::time::Duration>| {
                    list.sort();
                    list[list.len() / 2]
                };
                let [create, pull, approve, status] = &mut steps;
                println!(
                    "  one device, p50 per request: create {:?}  pull {:?}  approve {:?}  status {:?}",
                    p50(create),
                    p50(pull),
                    p50(approve),
                    p50(status)
                );
            }
            (latencies, completions)
        }));
    }
    let mut latencies = Vec::new();
    let mut completions = Vec::new();
    for task in tasks {
        let (took, done) = task.await.expect("device task");
        latencies.extend(took);
        completions.push(done);
    }
    let all = Latencies::new(latencies, started.elapsed());
    let steady = steady_rate(&completions);
    let policy = policy_name(with_policy);
    println!(
        "{label:<9} {devices:>3} devices  policy {policy:<8}  {:>6} cycles  {:>7.1} cycles/s  steady {}  p50 {}  p99 {}",
        all.count(),
        all.per_second(),
        steady.map_or("-".to_string(), |r| format!("{r:.1}/s")),
        all.p50(),
        all.p99(),
    );
    if let Ok(server) = Arc::try_unwrap(server) {
        server.server.shutdown().await;
    }
    Rates {
        whole: all.per_second(),
        steady,
        median: all.median(),
    }
}

/// One level's rates: over the whole run, and while every device ran ([`steady_rate`]); and
/// its median cycle.
#[derive(Debug, Clone, Copy)]
struct Rates {
    whole: f64,
    steady: Option<f64>,
    median: std::time::Duration,
}

/// A positive number from the environment variable `name`, if set.
fn env_count(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// The median of `rates` (not empty).
fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Prints each level's median rate over the rounds and its share of the best level's median:
/// once over the whole runs, once while every device ran ([`steady_rate`]; a level without a
/// steady window in some round counts its whole-run rate there).
fn summarize(label: &str, policy: &str, levels: &[usize], rates: &[Vec<Rates>]) {
    let rounds = rates.first().map_or(0, Vec::len);
    for (what, pick) in [
        ("whole run", (|r: &Rates| r.whole) as fn(&Rates) -> f64),
        ("steady", |r: &Rates| r.steady.unwrap_or(r.whole)),
    ] {
        let medians: Vec<f64> = rates
            .iter()
            .map(|r| median(&r.iter().map(pick).collect::<Vec<_>>()))
            .collect();
        let best = medians.iter().copied().fold(0.0, f64::max);
        let shares: Vec<String> = levels
            .iter()
            .zip(&medians)
            .map(|(n, m)| format!("{n} {m:.1}/s {:.0} %", 100.0 * m / best))
            .collect();
        println!(
            "{label:<9} policy {policy:<8}  {what:<9}  median of {rounds} rounds, share of the best level: {}",
            shares.join("  ")
        );
    }
}

/// `ENGINE_RATIO_ROUNDS`: `rounds` rounds of every level in `levels` (devices, cycles per
/// device) and both policies, each on SQLite and on PostgreSQL (`postgres`) back to back, the
/// engine that goes first alternating by round; prints each pair's PostgreSQL p50 over
/// SQLite's, then each level's median ratio with its lowest and highest.
async fn engine_ratios(postgres: String, levels: &[(usize, usize)], rounds: usize) {
    println!(
        "PostgreSQL's p50 over SQLite's, back to back, {rounds} rounds (SQLite first in odd rounds)"
    );
    // Every level, without and with the policy, each with its ratios over the rounds.
    let cases: Vec<(usize, usize, bool)> = levels
        .iter()
        .flat_map(|&(devices, cycles)| [false, true].map(|policy| (devices, cycles, policy)))
        .collect();
    let mut ratios = vec![Vec::new(); cases.len()];
    for round in 1..=rounds {
        for (&(devices, cycles, with_policy), found) in cases.iter().zip(&mut ratios) {
            let sqlite = || run_with(Backend::Sqlite, "sqlite", devices, cycles, with_policy);
            let postgres = || {
                let backend = Backend::Postgres(postgres.clone());
                run_with(backend, "postgres", devices, cycles, with_policy)
            };
            let (sqlite, postgres) = if round % 2 == 1 {
                let sqlite = sqlite().await;
                (sqlite, postgres().await)
            } else {
                let postgres = postgres().await;
                (sqlite().await, postgres)
            };
            let ratio = postgres.median.as_secs_f64() / sqlite.median.as_secs_f64();
            println!(
                "round {round}  {devices:>3} devices  policy {:<8}  PostgreSQL / SQLite p50 {ratio:.2}",
                policy_name(with_policy)
            );
            found.push(ratio);
        }
    }
    for (&(devices, _, with_policy), found) in cases.iter().zip(&ratios) {
        let low = found.iter().copied().fold(f64::INFINITY, f64::min);
        let high = found.iter().copied().fold(0.0, f64::max);
        println!(
            "ratio     {devices:>3} devices  policy {:<8}  median of {rounds} rounds {:.2} (lowest {low:.2}, highest {high:.2})",
            policy_name(with_policy),
            median(found)
        );
    }
}

/// How the lines name a run's policy.
fn policy_name(with_policy: bool) -> &'static str {
    if with_policy { "50 rules" } else { "none" }
}

/// The allocator the server binary runs with (`server/src/main.rs`): the server here runs in
/// this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let plan = plan("CYCLES_PER_DEVICE", 50, 2).with_bench_levels(&[1, 16, 64, 128, 256]);
    let cycles = plan.per_client;
    let per_level = env_count("CYCLES_PER_LEVEL");
    let rounds = env_count("LOAD_ROUNDS").unwrap_or(1);
    let cycles_at = |devices: usize| per_level.map_or(cycles, |total| (total / devices).max(1));
    if let Some(rounds) = env_count("ENGINE_RATIO_ROUNDS") {
        let postgres = backends()
            .into_iter()
            .find_map(|(backend, _)| match backend {
                Backend::Postgres(url) => Some(url),
                Backend::Sqlite => None,
            });
        let Some(postgres) = postgres else {
            println!("ENGINE_RATIO_ROUNDS needs DATABASE_URL=postgres://...");
            return;
        };
        let levels: Vec<(usize, usize)> = plan.levels.iter().map(|&n| (n, cycles_at(n))).collect();
        runtime().block_on(engine_ratios(postgres, &levels, rounds));
        return;
    }
    runtime().block_on(async {
        match per_level {
            Some(total) => println!(
                "authentication cycles over loopback (about {total} per level, at least one per device)"
            ),
            None => println!("authentication cycles over loopback ({cycles} per device)"),
        }
        for (backend, label) in backends() {
            // Rates by policy (none, 50 rules), then by level, one per round.
            let mut rates = vec![vec![Vec::new(); plan.levels.len()]; 2];
            for _ in 0..rounds {
                for (level, &n) in plan.levels.iter().enumerate() {
                    for (with_policy, by_level) in [false, true].into_iter().zip(&mut rates) {
                        let rate =
                            run_with(backend.clone(), label, n, cycles_at(n), with_policy).await;
                        by_level[level].push(rate);
                    }
                }
            }
            if rounds > 1 || per_level.is_some() {
                for (policy, by_level) in ["none", "50 rules"].into_iter().zip(&rates) {
                    summarize(label, policy, plan.levels, by_level);
                }
            }
        }
    });
}
