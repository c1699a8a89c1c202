//! The SDK's log records, handed to the app's own logger.
//!
//! The core logs with `tracing` (pairings, verifications, key refreshes, refused key sets,
//! removed enrollments). Without a logger those records go nowhere; [`set_logger`] installs a
//! small `tracing` subscriber, once per process, that passes each record at or above the chosen
//! level to the app's [`Logger`] (Logcat, `os_log`, Python's `logging`).
//!
//! What a record holds: its level, its target (the Rust module, e.g.
//! `tessera_core::authenticator`) and one line of text, the message followed by its fields as
//! `name=value`. The core never logs secrets: no key material, passcodes, pairing codes, tokens,
//! nonces or payloads, only ids, server URLs and error kinds (`docs/bindings.md`). Spans are
//! not reported. Records of the libraries underneath (HTTP, TLS) use the `log` facade and are not
//! forwarded.
//!
//! The subscriber is written here rather than taken from `tracing-subscriber`: it needs none of
//! that crate's formatting, filtering or span storage, and the Android library's size budget
//! (`scripts/ffi-size.sh`) has little room.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// How severe a log record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something unexpected the SDK recovered from.
    Warn,
    /// A step of a flow (a device paired, a key set refreshed).
    Info,
    /// Detail for debugging.
    Debug,
    /// Fine detail.
    Trace,
}

impl LogLevel {
    fn rank(self) -> u8 {
        match self {
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
            Self::Debug => 4,
            Self::Trace => 5,
        }
    }

    fn of(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::Error,
            Level::WARN => Self::Warn,
            Level::INFO => Self::Info,
            Level::DEBUG => Self::Debug,
            _ => Self::Trace,
        }
    }
}

/// One log record of the SDK.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct LogRecord {
    /// How severe it is.
    pub level: LogLevel,
    /// Where it comes from: the Rust module path, e.g. `tessera_core::authenticator`.
    pub target: String,
    /// The message, then its fields as `name=value`, on one line.
    pub message: String,
}

/// The app's logger: receives the SDK's records. Called on the thread that logged (often a
/// background thread); it must return quickly and must not call back into the SDK.
#[uniffi::export(with_foreign)]
pub trait Logger: Send + Sync {
    /// One record.
    fn log(&self, record: LogRecord);
}

/// The logger records go to, and the most detailed level passed on (0: none).
static LOGGER: RwLock<Option<Arc<dyn Logger>>> = RwLock::new(None);
static MAX_RANK: AtomicU8 = AtomicU8::new(0);
static INSTALL: Once = Once::new();

/// Sends the SDK's log records at `min_level` and more severe to `logger`, replacing any logger
/// set before; `None` stops logging. Where the process already has another global `tracing`
/// subscriber (a Rust host app), that one keeps the records and this call changes nothing.
#[uniffi::export]
pub fn set_logger(logger: Option<Arc<dyn Logger>>, min_level: LogLevel) {
    let rank = if logger.is_some() {
        min_level.rank()
    } else {
        0
    };
    match LOGGER.write() {
        Ok(mut slot) => *slot = logger,
        Err(poisoned) => *poisoned.into_inner() = logger,
    }
    MAX_RANK.store(rank, Ordering::Release);
    INSTALL.call_once(|| {
        // Fails only when the host already installed a subscriber: it then keeps the records.
        let _ = tracing::subscriber::set_global_default(ForwardToApp {
            next_span: AtomicU64::new(1),
        });
    });
    tracing::callsite::rebuild_interest_cache();
}

/// A `tracing` subscriber that forwards events to [`LOGGER`].
struct ForwardToApp {
    next_span: AtomicU64,
}

impl ForwardToApp {
    fn wants(metadata: &Metadata<'_>) -> bool {
        LogLevel::of(metadata.level()).rank() <= MAX_RANK.load(Ordering::Acquire)
    }
}

impl Subscriber for ForwardToApp {
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // The level can change at any time: ask `enabled` each time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && Self::wants(metadata)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        // Spans are not reported; each still needs a distinct, non-zero id.
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        if !Self::wants(metadata) {
            return;
        }
        let logger = match LOGGER.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(logger) = logger else {
            return;
        };
        let mut line = Line::default();
        event.record(&mut line);
        logger.log(LogRecord {
            level: LogLevel::of(metadata.level()),
            target: metadata.target().to_string(),
            message: line.finish(),
        });
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Builds a record's one line: the message, then `name=value` for every other field.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn finish(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<LogRecord>>);

    impl Logger for Collect {
        fn log(&self, record: LogRecord) {
            if let Ok(mut records) = self.0.lock() {
                records.push(record);
            }
        }
    }

    impl Collect {
        fn take(&self) -> Vec<LogRecord> {
            self.0
                .lock()
                .map(|mut r| std::mem::take(&mut *r))
                .unwrap_or_default()
        }
    }

    // One test: the subscriber is global to the process.
    #[test]
    fn records_reach_the_app_at_its_level_with_fields_and_stop_when_unset() {
        let collect = Arc::new(Collect::default());
        set_logger(Some(collect.clone()), LogLevel::Info);
        let server = "https://auth.example";
        tracing::info!(%server, attempt = 2, "server keys refreshed");
        tracing::debug!("not wanted at info");
        let records = collect.take();
        assert_eq!(
            records,
            vec![LogRecord {
                level: LogLevel::Info,
                target: module_path!().to_string(),
                message: "server keys refreshed server=https://auth.example attempt=2".into(),
            }]
        );

        set_logger(Some(collect.clone()), LogLevel::Trace);
        tracing::trace!(enrollment_id = "e1", "fine detail");
        let span = tracing::info_span!("span", id = 1);
        span.in_scope(|| tracing::warn!("inside a span"));
        let levels: Vec<LogLevel> = collect.take().iter().map(|r| r.level).collect();
        assert_eq!(levels, vec![LogLevel::Trace, LogLevel::Warn]);

        set_logger(None, LogLevel::Trace);
        tracing::error!("nobody listens");
        assert!(collect.take().is_empty());
    }
}
