//! The `tessera-server` binary run as a process of its own, for the benches that measure it apart
//! from their load generator (its CPU time, memory and file descriptors are then its own):
//! starting it, creating its application with the admin command, and what `/proc` says about it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use tessera_protocol::api::CreatedApplication;

/// A running `tessera-server serve`, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// The base URL it listens on (`http://127.0.0.1:PORT`).
    pub base_url: String,
}

impl ServerProcess {
    /// Starts `serve` on `database_url`, on a free loopback port, with `args` added to its
    /// command line (limits, `--public-url`, …), its log written to `log`; waits for its
    /// "listening on" line.
    pub fn start(bin: &Path, database_url: &str, args: &[String], log: &Path) -> Self {
        let mut command = Command::new(bin);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                database_url,
            ])
            .args(["--pairing-failures-per-minute", "100000"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"));
        let mut child = command.spawn().expect("start tessera-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("server output");
        // Keep reading, so the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let Some(base_url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "tessera-server did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        let pid = child.id();
        ServerProcess {
            child,
            pid,
            base_url: base_url.to_string(),
        }
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// (read syscalls, write syscalls) so far.
    pub fn syscalls(&self) -> (u64, u64) {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (field("syscr:"), field("syscw:"))
    }

    /// Open sockets.
    pub fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's user + system CPU seconds so far.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// User + system CPU seconds from a `/proc/…/stat` file.
pub fn cpu_seconds_of(stat: &str) -> f64 {
    let stat = std::fs::read_to_string(stat).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `tessera-server admin create-app NAME` on `database_url`: the application and its API key.
pub fn create_app(bin: &Path, database_url: &str, name: &str) -> CreatedApplication {
    let out = Command::new(bin)
        .args(["admin", "--database", database_url, "create-app", name])
        .env("RUST_LOG", "warn")
        .output()
        .expect("admin create-app");
    assert!(
        out.status.success(),
        "create-app failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("create-app JSON")
}

/// The binary to measure, or `None` (with the reason printed): `TESSERA_SERVER_BIN`, else
/// `target/release/tessera-server`, else `target/debug/tessera-server`. The path used is
/// printed, with a warning when it is older than `server/src`.
pub fn server_binary() -> Option<PathBuf> {
    let usable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let bin = match std::env::var_os("TESSERA_SERVER_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"));
            let release = target.join("release/tessera-server");
            if usable(&release) {
                release
            } else {
                target.join("debug/tessera-server")
            }
        }
    };
    if !usable(&bin) {
        println!(
            "skipped: no tessera-server binary at {} (cargo build -p tessera-server --release, or set TESSERA_SERVER_BIN)",
            bin.display()
        );
        return None;
    }
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let newest_source = newest_modification(&workspace.join("server/src"));
    println!("measuring {}", bin.display());
    if let (Some(built), Some(source)) = (built, newest_source)
        && built < source
    {
        println!("WARNING: the binary is older than server/src; rebuild it");
    }
    Some(bin)
}

fn newest_modification(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_modification(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}
