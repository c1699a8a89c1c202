//! Shared pieces of the load generators under `tests/benches/`: percentiles, formatting, and
//! the backends a run covers.

use std::time::Duration;

use crate::Backend;

/// The `p` quantile (0.0–1.0) of sorted latencies (nearest rank). Panics on an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// SQLite, and PostgreSQL when `DATABASE_URL` points at one (otherwise says it is skipped).
pub fn backends() -> Vec<(Backend, &'static str)> {
    let mut backends = vec![(Backend::Sqlite, "sqlite")];
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            backends.push((Backend::Postgres(url), "postgres"))
        }
        _ => println!("postgres  skipped (set DATABASE_URL=postgres://...)"),
    }
    backends
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
}
