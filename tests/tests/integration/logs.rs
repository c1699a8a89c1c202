//! One log capture for the whole test binary: the tests that search the logs for secrets
//! install a global subscriber at TRACE level, which a process can do only once. Every test of
//! the binary logs into the same capture once it is installed; the searches look for secrets
//! no test may ever see logged, so what other tests add does no harm.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED: OnceLock<Captured> = OnceLock::new();

/// Starts capturing every log line of the process as JSON at TRACE level (once; later calls do
/// nothing).
pub fn capture() {
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .init();
        captured
    });
}

/// Everything logged since [`capture`] was first called.
pub fn captured() -> String {
    let captured = CAPTURED.get().expect("logs::capture() was called");
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}
