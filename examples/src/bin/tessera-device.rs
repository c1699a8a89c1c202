//! `tessera-device`: a command-line device built on the Tessera device core.
//!
//! It keeps its key store and encrypted state in `--state DIR` (a software key store: for
//! development and testing, not hardware-backed).
//!
//! ```text
//! tessera-device --state DIR pair CODE_OR_URI [--server URL]
//! tessera-device --state DIR list
//! tessera-device --state DIR status ENROLLMENT_ID
//! tessera-device --state DIR remove ENROLLMENT_ID
//! tessera-device --state DIR mobile-payload --server URL
//! tessera-device --state DIR complete-relay SERVER_PAYLOAD
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::json;
use tessera_core::{
    Authenticator, AuthenticatorConfig, CoreError, Enrollment, FileStorage, KeyStore,
    SecureStorage, SoftwareKeyStore,
};
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::{DeviceInfo, DeviceSignals};

#[derive(Parser)]
#[command(
    name = "tessera-device",
    version,
    about = "A command-line Tessera device"
)]
struct Cli {
    /// Folder holding this device's key store and encrypted state (created if missing).
    #[arg(long, env = "TESSERA_DEVICE_STATE")]
    state: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Allow plain http to servers that are not on loopback (development only).
    #[arg(long, global = true)]
    allow_insecure_http: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pair with a pairing code (with --server) or a pairing URI (tessera://pair?...).
    Pair {
        /// The code as shown (XXXX-XXXX-XXXX) or the scanned URI.
        code_or_uri: String,
        /// The server's URL; needed with a bare code.
        #[arg(long)]
        server: Option<String>,
    },
    /// List this device's enrollments.
    List,
    /// Ask the server whether an enrollment is still active (a device-signed call).
    Status {
        /// The enrollment id (enr_...).
        enrollment_id: String,
    },
    /// Unpair: tell the server, then delete the enrollment and its keys.
    Remove {
        /// The enrollment id (enr_...).
        enrollment_id: String,
    },
    /// Relay pairing, step 1: print a mobile payload for the app's backend to forward.
    MobilePayload {
        /// The server the backend will forward it to.
        #[arg(long)]
        server: String,
    },
    /// Relay pairing, step 2: complete with the server payload the backend handed back.
    CompleteRelay {
        /// The server payload.
        server_payload: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                eprintln!(
                    "{}",
                    json!({"error": {"code": e.code(), "message": e.to_string()}})
                );
            } else {
                eprintln!("error [{}]: {e}", e.code());
            }
            ExitCode::FAILURE
        }
    }
}

async fn open(cli: &Cli) -> Result<Authenticator, CoreError> {
    let key_store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::open(cli.state.join("keys"))?);
    let storage: Arc<dyn SecureStorage> = Arc::new(FileStorage::new(cli.state.join("state"))?);
    let config = AuthenticatorConfig {
        device: DeviceInfo {
            model: "tessera-device".into(),
            os_name: std::env::consts::OS.into(),
            os_version: String::new(),
            app_version: env!("CARGO_PKG_VERSION").into(),
            sdk_version: env!("CARGO_PKG_VERSION").into(),
            name: None,
        },
        signals: DeviceSignals::default(),
        allow_insecure_http: cli.allow_insecure_http,
        ..AuthenticatorConfig::default()
    };
    Authenticator::open(config, key_store, storage).await
}

fn parse_enrollment(id: &str) -> Result<EnrollmentId, CoreError> {
    id.parse()
        .map_err(|_| CoreError::InvalidInput("not an enrollment id (enr_...)".into()))
}

fn print_enrollment(cli: &Cli, verb: &str, e: &Enrollment) {
    if cli.json {
        println!("{}", enrollment_json(e));
    } else {
        println!(
            "{verb} {} as {:?} on {} ({}), enrollment {}",
            e.application.name,
            e.user_id.as_str(),
            e.server,
            e.application.id,
            e.enrollment_id
        );
    }
}

fn enrollment_json(e: &Enrollment) -> serde_json::Value {
    json!({
        "enrollment_id": e.enrollment_id,
        "server": e.server,
        "application": {"id": e.application.id, "name": e.application.name},
        "user_id": e.user_id,
        "device_id": e.device_id,
        "paired_at": e.paired_at,
    })
}

async fn run(cli: &Cli) -> Result<(), CoreError> {
    let auth = open(cli).await?;
    match &cli.command {
        Command::Pair {
            code_or_uri,
            server,
        } => {
            let enrollment = auth.pair(code_or_uri, server.as_deref()).await?;
            print_enrollment(cli, "paired with", &enrollment);
        }
        Command::List => {
            let enrollments = auth.enrollments().await;
            if cli.json {
                let list: Vec<_> = enrollments.iter().map(enrollment_json).collect();
                println!(
                    "{}",
                    json!({"device_id": auth.device_id(), "enrollments": list})
                );
            } else if enrollments.is_empty() {
                println!("device {}: no enrollments", auth.device_id());
            } else {
                println!("device {}:", auth.device_id());
                for e in &enrollments {
                    println!(
                        "  {}  {:<24} {} on {}",
                        e.enrollment_id,
                        e.user_id.as_str(),
                        e.application.name,
                        e.server
                    );
                }
            }
        }
        Command::Status { enrollment_id } => {
            let status = auth
                .enrollment_status(&parse_enrollment(enrollment_id)?)
                .await?;
            if cli.json {
                println!("{}", json!(status));
            } else {
                println!("{}: {}", status.enrollment_id, status.status);
            }
        }
        Command::Remove { enrollment_id } => {
            let id = parse_enrollment(enrollment_id)?;
            auth.remove_enrollment(&id).await?;
            if cli.json {
                println!("{}", json!({"removed": id}));
            } else {
                println!("removed {id}");
            }
        }
        Command::MobilePayload { server } => {
            let payload = auth.create_mobile_payload(server).await?;
            if cli.json {
                println!("{}", json!({"mobile_payload": payload}));
            } else {
                println!("{payload}");
            }
        }
        Command::CompleteRelay { server_payload } => {
            let enrollment = auth.complete_relay_pairing(server_payload).await?;
            print_enrollment(cli, "paired with", &enrollment);
        }
    }
    Ok(())
}
