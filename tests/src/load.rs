//! Shared pieces of the load generators under `tests/benches/`: percentiles, formatting, and
//! the backends a run covers.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::{Backend, SchemaGuard};

/// How much one run does. `cargo bench` passes `--bench` (the full run at 1, 16 and 64
/// concurrent clients, or the levels a generator asks for with [`Plan::with_bench_levels`]);
/// `cargo test --all-targets` runs the generator without it, and then only a short smoke run at
/// 1 and 2 clients is made, as criterion does. `LOAD_LEVELS=1,16` sets the levels of either run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Operations per client (`env_var` overrides it).
    pub per_client: usize,
    /// The concurrency levels to run.
    pub levels: &'static [usize],
    /// Whether this is the full run.
    pub benchmarking: bool,
}

/// The plan: `bench_default` operations per client under `cargo bench`, `smoke_default`
/// otherwise, or the positive number in `env_var`.
pub fn plan(env_var: &str, bench_default: usize, smoke_default: usize) -> Plan {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let per_client = std::env::var(env_var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benchmarking {
            bench_default
        } else {
            smoke_default
        })
        .max(1);
    Plan {
        per_client,
        levels: levels_from_env().unwrap_or(if benchmarking { &[1, 16, 64] } else { &[1, 2] }),
        benchmarking,
    }
}

impl Plan {
    /// The full run's levels are `levels` (the smoke run and `LOAD_LEVELS` are unchanged).
    pub fn with_bench_levels(self, levels: &'static [usize]) -> Plan {
        Plan {
            levels: if self.benchmarking && levels_from_env().is_none() {
                levels
            } else {
                self.levels
            },
            ..self
        }
    }
}

/// `LOAD_LEVELS=1,16,64`: the concurrency levels to run, if set and valid.
fn levels_from_env() -> Option<&'static [usize]> {
    let levels: Vec<usize> = std::env::var("LOAD_LEVELS")
        .ok()?
        .split(',')
        .map(|l| l.trim().parse().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()?;
    if levels.is_empty() {
        return None;
    }
    let leaked: &'static [usize] = levels.leak();
    Some(leaked)
}

/// The multi-threaded runtime a generator runs on (see the comment inside for `RUST_LOG`).
pub fn runtime() -> tokio::runtime::Runtime {
    // With `RUST_LOG` set, the in-process server's log goes to stderr (a bench that fails under
    // load says why); without it the server logs nothing, as the figures assume.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Latencies gathered from concurrent clients, with the run's wall time.
#[derive(Debug, Clone)]
pub struct Latencies {
    sorted: Vec<Duration>,
    elapsed: Duration,
}

impl Latencies {
    /// Waits for every client task (each returns its latencies) and measures from `started`.
    pub async fn gather(started: Instant, tasks: Vec<JoinHandle<Vec<Duration>>>) -> Self {
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("client task"));
        }
        Self::new(latencies, started.elapsed())
    }

    /// Latencies measured by the caller, over `elapsed` of wall time.
    pub fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort();
        Self {
            sorted: latencies,
            elapsed,
        }
    }

    /// How many operations completed.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }

    /// Operations per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.sorted.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The median, formatted.
    pub fn p50(&self) -> String {
        ms(percentile(&self.sorted, 0.5))
    }

    /// The 99th percentile, formatted.
    pub fn p99(&self) -> String {
        ms(percentile(&self.sorted, 0.99))
    }

    /// The median.
    pub fn median(&self) -> Duration {
        percentile(&self.sorted, 0.5)
    }
}

/// Operations per second while every client was running, from each client's completion times
/// (in order): from the moment the last client completed its first operation (every client has
/// connected and warmed up) to the moment the first client completed its last one (none has
/// stopped yet). A closed loop's whole-run rate also counts its ramp-up (each client's first
/// connection and first operation) and its drain (the last clients' operations finishing with
/// fewer clients left), which weigh more the fewer operations each client runs; this rate counts
/// neither. `None` when the window holds no completed operation (too few per client).
pub fn steady_rate(completions: &[Vec<Instant>]) -> Option<f64> {
    let warm = completions.iter().map(|c| c.first()).max()??;
    let drain = completions.iter().map(|c| c.last()).min()??;
    let window = drain.checked_duration_since(*warm)?;
    let done = completions
        .iter()
        .flatten()
        .filter(|at| *at > warm && *at <= drain)
        .count();
    (done > 0 && !window.is_zero()).then(|| done as f64 / window.as_secs_f64())
}

/// The `p` quantile (0.0–1.0) of sorted latencies (nearest rank). Panics on an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The server's database pool size under load (`max_connections`): `POOL_SIZE` when set, else
/// the server's default (`tessera_server::default_max_connections`), so the figures are the server's
/// as it ships.
pub fn pool_size() -> u32 {
    std::env::var("POOL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(tessera_server::default_max_connections)
}

/// The server's `--commit-durability` for a bench: `COMMIT_DURABILITY=flushed` or `written`;
/// unset (or anything else), each engine's own way.
pub fn commit_durability() -> Option<tessera_server::CommitDurability> {
    match std::env::var("COMMIT_DURABILITY").ok().as_deref() {
        Some("flushed") => Some(tessera_server::CommitDurability::Flushed),
        Some("written") => Some(tessera_server::CommitDurability::Written),
        _ => None,
    }
}

/// SQLite, and PostgreSQL when `DATABASE_URL` points at one (otherwise says it is skipped).
///
/// A bench starts each measurement's server with [`crate::TestServer::start_isolated_with`]: on
/// SQLite a new file, on PostgreSQL a new schema of the database, dropped with the server. Every
/// level then starts from empty tables on both engines, instead of a later level running on the
/// rows the earlier ones left (thousands of requests, some unanswered and swept, expired and
/// reported while the next level is measured).
pub fn backends() -> Vec<(Backend, &'static str)> {
    let mut items = vec![(Backend::Sqlite, "sqlite")];
    if let Some(url) = postgres_url_from_env() {
        items.push((Backend::Postgres(url), "postgres"));
    }
    items
}

/// `DATABASE_URL` when it points at PostgreSQL; otherwise `None`, and the bench says PostgreSQL
/// is skipped.
fn postgres_url_from_env() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Some(url),
        _ => {
            println!("postgres  skipped (set DATABASE_URL=postgres://...)");
            None
        }
    }
}

/// With `DATABASE_URL` pointing at PostgreSQL, a fresh schema of its database for a bench to
/// measure in: the URL that works in it and the guard that drops it. Otherwise `None`, and the
/// bench says PostgreSQL is skipped.
pub async fn postgres_schema_from_env() -> Option<(String, SchemaGuard)> {
    let url = postgres_url_from_env()?;
    Some(SchemaGuard::create(&url, "bench").await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(ms(Duration::from_micros(1500)), "1.50 ms");
    }

    #[test]
    fn the_steady_rate_counts_only_while_every_client_runs() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Client a warms up slowly (first at 500 ms), b stops early (last at 1,500 ms): the
        // window is (500, 1500], holding a's 1,000 and 1,500 and b's 600, 1,000 and 1,500.
        let a = vec![at(500), at(1000), at(1500), at(2000), at(3000)];
        let b = vec![at(100), at(200), at(600), at(1000), at(1500)];
        let rate = steady_rate(&[a.clone(), b]).expect("a window");
        assert!((rate - 5.0).abs() < 1e-9, "{rate}");
        // One operation per client: no window.
        assert_eq!(steady_rate(&[vec![at(1)], vec![at(2)]]), None);
        assert_eq!(steady_rate(&[a, Vec::new()]), None);
        assert_eq!(steady_rate(&[]), None);
    }
}
