//! `tessera-device`: a command-line device built on the Tessera device core.
//!
//! It keeps its key store and encrypted state in `--state DIR` (a software key store: for
//! development and testing, not hardware-backed).
//!
//! ```text
//! tessera-device --state DIR pair CODE_OR_URI [--server URL] [--wait-verification SECONDS]
//! tessera-device --state DIR list
//! tessera-device --state DIR status ENROLLMENT_ID
//! tessera-device --state DIR remove ENROLLMENT_ID
//! tessera-device --state DIR push-token ENROLLMENT_ID (--fcm TOKEN | --apns TOKEN [--sandbox] | --none)
//! tessera-device --state DIR mobile-payload --server URL
//! tessera-device --state DIR complete-relay SERVER_PAYLOAD
//! tessera-device --state DIR pending [--wait SECONDS]
//! tessera-device --state DIR approve REQUEST_ID [--amr fpt] [--number N]
//! tessera-device --state DIR deny REQUEST_ID [--reason declined|fraud]
//! tessera-device --state DIR watch [--auto-approve] [--count N]
//! tessera-device --state DIR otp (import URI | list | code ACCOUNT_ID | remove ACCOUNT_ID)
//! tessera-device --state DIR qr SCANNED_TEXT [--user USER_ID] [--deny declined|fraud] [--amr face]
//! ```
//!
//! Silent verifications are answered by the core as soon as they are seen; they are never
//! shown.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::json;
use tessera_core::{
    Authenticator, AuthenticatorConfig, CoreError, Enrollment, FileStorage, IncomingRequest,
    KeyStore, SecureStorage, SoftwareKeyStore,
};
use tessera_protocol::api::EnrollmentState;
use tessera_protocol::ids::EnrollmentId;
use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration};

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
        /// When the application verifies new devices with the user's primary device: seconds to
        /// wait for that approval (0: return at once, pending).
        #[arg(long, default_value_t = 120)]
        wait_verification: u64,
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
    /// Register a fresh push token for an enrollment (a device-signed call); a token the server
    /// had marked stale is replaced and pushes resume.
    PushToken {
        /// The enrollment id (enr_...).
        enrollment_id: String,
        /// An FCM registration token.
        #[arg(long, conflicts_with_all = ["apns", "none"])]
        fcm: Option<String>,
        /// An APNs device token (hex).
        #[arg(long, conflicts_with = "none")]
        apns: Option<String>,
        /// With --apns: a development build (APNs sandbox).
        #[arg(long, requires = "apns")]
        sandbox: bool,
        /// No push: the device pulls.
        #[arg(long)]
        none: bool,
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
    /// Show the pending requests of every enrollment.
    Pending {
        /// Seconds to wait for one to arrive (long-poll, at most 30).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Approve a pending request.
    Approve {
        /// The request id (aut_...).
        request_id: String,
        /// How the user was verified (RFC 8176 amr values, comma-separated: fpt, face, pin, ...).
        #[arg(long, value_delimiter = ',')]
        amr: Vec<String>,
        /// Number matching: the number shown on the web page.
        #[arg(long)]
        number: Option<u32>,
    },
    /// Deny a pending request.
    Deny {
        /// The request id (aut_...).
        request_id: String,
        /// Why: the user declined, or did not start this (fraud).
        #[arg(long, value_enum, default_value = "declined")]
        reason: DenyReason,
    },
    /// Scan a QR login code: show where the sign-in comes from, then approve (or deny) it for
    /// one of this device's users.
    Qr {
        /// The text the QR code holds (`tessera://qr?server=...&token=...`).
        scanned: String,
        /// Which user answers, when several users of this device may (the user id).
        #[arg(long)]
        user: Option<String>,
        /// Deny instead of approving (`declined`, or `fraud`: the user did not start this).
        #[arg(long, value_enum)]
        deny: Option<DenyReason>,
        /// How the user was verified (RFC 8176 amr values, comma-separated: fpt, face, pin, ...).
        #[arg(long, value_delimiter = ',')]
        amr: Vec<String>,
    },
    /// Offline one-time passcodes for accounts imported from `otpauth://` URIs.
    Otp {
        #[command(subcommand)]
        command: OtpCommand,
    },
    /// Long-poll every enrollment and print requests as they arrive, until interrupted.
    Watch {
        /// Approve every request automatically (for demos and load tests).
        #[arg(long)]
        auto_approve: bool,
        /// Stop after this many requests.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand)]
enum OtpCommand {
    /// Import an account from its `otpauth://` key URI (the text of a service's authenticator
    /// QR code).
    Import {
        /// The `otpauth://totp/...` or `otpauth://hotp/...` URI.
        uri: String,
    },
    /// List the accounts (no secrets).
    List,
    /// Print an account's current code (TOTP) or next code (HOTP).
    Code {
        /// The account id (otp_...).
        account_id: String,
    },
    /// Delete an account and its secret from this device.
    Remove {
        /// The account id (otp_...).
        account_id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DenyReason {
    Declined,
    Fraud,
}

fn otp_json(a: &tessera_core::OtpAccount) -> serde_json::Value {
    let (kind, period, counter) = match a.kind {
        tessera_core::OtpKind::Totp { period } => ("totp", Some(period), None),
        tessera_core::OtpKind::Hotp { counter } => ("hotp", None, Some(counter)),
    };
    json!({
        "id": a.id.to_string(),
        "issuer": a.issuer,
        "account_name": a.account_name,
        "kind": kind,
        "period": period,
        "counter": counter,
        "short_secret": a.short_secret,
    })
}

async fn otp(cli: &Cli, auth: &Authenticator, command: &OtpCommand) -> Result<(), CoreError> {
    let parse_id = |id: &str| {
        id.parse::<tessera_core::OtpAccountId>()
            .map_err(|_| CoreError::InvalidInput("not an OTP account id (otp_...)".into()))
    };
    match command {
        OtpCommand::Import { uri } => {
            let account = auth.import_otp_account(uri).await?;
            if cli.json {
                println!("{}", otp_json(&account));
            } else {
                println!(
                    "imported {} ({}) as {}",
                    account.account_name,
                    account.issuer.as_deref().unwrap_or("no issuer"),
                    account.id
                );
            }
        }
        OtpCommand::List => {
            let accounts = auth.otp_accounts().await;
            if cli.json {
                let list: Vec<_> = accounts.iter().map(otp_json).collect();
                println!("{}", json!({"accounts": list}));
            } else if accounts.is_empty() {
                println!("no OTP accounts");
            } else {
                for a in &accounts {
                    println!(
                        "  {}  {:<20} {}",
                        a.id,
                        a.issuer.as_deref().unwrap_or("-"),
                        a.account_name
                    );
                }
            }
        }
        OtpCommand::Code { account_id } => {
            let code = auth.one_time_passcode(&parse_id(account_id)?).await?;
            let valid_for = code.valid_for.map(|d| d.as_secs());
            if cli.json {
                println!("{}", json!({"code": code.code, "valid_for": valid_for}));
            } else if let Some(left) = valid_for {
                println!("{} (valid for {left} s)", code.code);
            } else {
                println!("{}", code.code);
            }
        }
        OtpCommand::Remove { account_id } => {
            auth.remove_otp_account(&parse_id(account_id)?).await?;
            if cli.json {
                println!("{}", json!({"removed": account_id}));
            } else {
                println!("removed {account_id}");
            }
        }
    }
    Ok(())
}

fn user_list(qr: &tessera_core::QrAuthentication) -> String {
    qr.users
        .iter()
        .map(|u| u.user_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
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

fn request_json(r: &IncomingRequest) -> serde_json::Value {
    json!({
        "request_id": r.request_id,
        "enrollment_id": r.enrollment_id,
        "user_id": r.user_id,
        "application": r.application.name,
        "kind": r.kind,
        "message": r.message,
        "fields": r.fields,
        "hidden_fields": r.hidden_fields,
        "context": r.context,
        "number_matching": r.number_matching,
        "number_choices": r.number_choices,
        "require_user_verification": r.require_user_verification,
        "ciba": r.ciba,
        "expires_at": r.expires_at,
    })
}

fn print_request(cli: &Cli, r: &IncomingRequest) {
    if cli.json {
        println!("{}", request_json(r));
        return;
    }
    println!(
        "{}  for {:?} at {}",
        r.request_id,
        r.user_id.as_str(),
        r.application.name
    );
    if let Some(ciba) = &r.ciba {
        println!(
            "    backchannel sign-in asked by {} (scopes: {})",
            ciba.client_name,
            ciba.scopes.join(" ")
        );
    }
    println!("    {}", r.message);
    for f in &r.fields {
        println!("    {:<12} {}", f.label, f.value);
    }
    if !r.hidden_fields.is_empty() {
        println!("    also approved (additional context):");
        for f in &r.hidden_fields {
            println!("      {:<12} {}", f.label, f.value);
        }
    }
    if let Some(ip) = &r.context.ip {
        let place = r.context.location.as_deref().unwrap_or("unknown location");
        println!("    from {ip} ({place})");
    }
    if let Some(choices) = &r.number_choices {
        println!("    pick the number shown on the web page: {choices:?}");
    } else if r.number_matching.is_on() {
        println!("    type the number shown on the web page (--number N)");
    }
    if r.require_user_verification {
        println!("    needs biometrics or the device PIN (--amr fpt|face|pin)");
    }
}

async fn find_request(auth: &Authenticator, id: &str) -> Result<IncomingRequest, CoreError> {
    auth.pending_requests()
        .await?
        .into_iter()
        .find(|r| r.request_id.as_str() == id)
        .ok_or_else(|| CoreError::InvalidInput("no pending request with this id".into()))
}

async fn watch(
    cli: &Cli,
    auth: Arc<Authenticator>,
    auto_approve: bool,
    count: Option<usize>,
) -> Result<(), CoreError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<IncomingRequest, CoreError>>(64);
    for enrollment in auth.enrollments().await {
        let auth = Arc::clone(&auth);
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match auth
                    .wait_for_requests(
                        &enrollment.enrollment_id,
                        std::time::Duration::from_secs(25),
                    )
                    .await
                {
                    Ok(requests) => {
                        for r in requests {
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(CoreError::Network(_)) => {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut seen = std::collections::HashSet::new();
    while let Some(next) = rx.recv().await {
        let request = next?;
        if !seen.insert(request.request_id.clone()) {
            continue;
        }
        print_request(cli, &request);
        if auto_approve && request.number_matching.is_on() {
            println!(
                "    -> not approved automatically: it needs the number shown on the web page"
            );
        } else if auto_approve {
            let amr = if request.require_user_verification {
                vec!["pin".to_string()]
            } else {
                vec![]
            };
            match auth.approve(&request, amr, None).await {
                Ok(r) => println!("    -> {}", r.state.as_str()),
                Err(e) => println!("    -> not approved: {e}"),
            }
        }
        if count.is_some_and(|n| seen.len() >= n) {
            break;
        }
    }
    Ok(())
}

fn enrollment_json(e: &Enrollment) -> serde_json::Value {
    json!({
        "enrollment_id": e.enrollment_id,
        "server": e.server,
        "application": {"id": e.application.id, "name": e.application.name},
        "user_id": e.user_id,
        "device_id": e.device_id,
        "status": e.status,
        "paired_at": e.paired_at,
    })
}

async fn run(cli: &Cli) -> Result<(), CoreError> {
    let auth = Arc::new(open(cli).await?);
    match &cli.command {
        Command::Pair {
            code_or_uri,
            server,
            wait_verification,
        } => {
            let mut enrollment = auth.pair(code_or_uri, server.as_deref()).await?;
            if enrollment.status == EnrollmentState::PendingVerification && *wait_verification > 0 {
                if !cli.json {
                    println!(
                        "waiting up to {wait_verification} s for the primary device to approve enrollment {}",
                        enrollment.enrollment_id
                    );
                }
                enrollment.status = auth
                    .wait_for_verification(
                        &enrollment.enrollment_id,
                        std::time::Duration::from_secs(*wait_verification),
                    )
                    .await?;
            }
            match enrollment.status {
                EnrollmentState::Active => print_enrollment(cli, "paired with", &enrollment),
                EnrollmentState::PendingVerification => print_enrollment(
                    cli,
                    "waiting for the primary device: paired with",
                    &enrollment,
                ),
                EnrollmentState::Rejected => {
                    // Not an error of this program: the user's primary device said no (or nobody
                    // answered). The enrollment and its keys are already deleted.
                    if cli.json {
                        eprintln!(
                            "{}",
                            json!({"error": {"code": "device_not_approved", "message": "the primary device did not approve this device"}})
                        );
                    } else {
                        eprintln!(
                            "the primary device did not approve this device; the enrollment was deleted"
                        );
                    }
                    std::process::exit(2);
                }
            }
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
        Command::PushToken {
            enrollment_id,
            fcm,
            apns,
            sandbox,
            none,
        } => {
            let id = parse_enrollment(enrollment_id)?;
            let push = match (fcm, apns) {
                (Some(token), _) => PushRegistration::Fcm {
                    token: token.clone(),
                },
                (None, Some(token)) => PushRegistration::Apns {
                    token: token.clone(),
                    sandbox: *sandbox,
                },
                (None, None) if *none => PushRegistration::None,
                (None, None) => {
                    return Err(CoreError::InvalidInput(
                        "give --fcm TOKEN, --apns TOKEN or --none".into(),
                    ));
                }
            };
            auth.update_push_token(&id, &push).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"enrollment_id": id, "push_provider": push.provider()})
                );
            } else {
                println!("{id}: push token registered ({})", push.provider());
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
        Command::Pending { wait } => {
            let mut requests = auth.pending_requests().await?;
            if requests.is_empty() && *wait > 0 {
                for e in auth.enrollments().await {
                    requests = auth
                        .wait_for_requests(&e.enrollment_id, std::time::Duration::from_secs(*wait))
                        .await?;
                    if !requests.is_empty() {
                        break;
                    }
                }
            }
            if cli.json {
                let list: Vec<_> = requests.iter().map(request_json).collect();
                println!("{}", json!({"requests": list}));
            } else if requests.is_empty() {
                println!("no pending requests");
            } else {
                for r in &requests {
                    print_request(cli, r);
                }
            }
        }
        Command::Approve {
            request_id,
            amr,
            number,
        } => {
            let request = find_request(&auth, request_id).await?;
            let recorded = auth.approve(&request, amr.clone(), *number).await?;
            if cli.json {
                println!("{}", json!(recorded));
            } else {
                println!(
                    "{}: {}",
                    recorded.authentication_id,
                    recorded.state.as_str()
                );
            }
        }
        Command::Deny { request_id, reason } => {
            let request = find_request(&auth, request_id).await?;
            let recorded = auth
                .deny(&request, matches!(reason, DenyReason::Fraud))
                .await?;
            if cli.json {
                println!("{}", json!(recorded));
            } else {
                println!(
                    "{}: {}",
                    recorded.authentication_id,
                    recorded.state.as_str()
                );
            }
        }
        Command::Qr {
            scanned,
            user,
            deny,
            amr,
        } => {
            let qr = auth.authenticate_with_qr(scanned).await?;
            let chosen = match (user, qr.users.as_slice()) {
                (Some(name), _) => qr
                    .users
                    .iter()
                    .find(|u| u.user_id.as_str() == name)
                    .ok_or_else(|| {
                        CoreError::InvalidInput(format!(
                            "that user may not answer this code; these may: {}",
                            user_list(&qr)
                        ))
                    })?,
                (None, [only]) => only,
                (None, _) => {
                    return Err(CoreError::InvalidInput(format!(
                        "several users may answer this code; choose one with --user: {}",
                        user_list(&qr)
                    )));
                }
            };
            if !cli.json {
                println!(
                    "sign in to {} as {:?} from {} ({})?",
                    qr.application.name,
                    chosen.user_id.as_str(),
                    qr.context.ip.as_deref().unwrap_or("an unknown address"),
                    qr.context.location.as_deref().unwrap_or("unknown location")
                );
            }
            let recorded = match deny {
                Some(reason) => {
                    auth.deny_qr(&qr, &chosen.user_id, matches!(reason, DenyReason::Fraud))
                        .await?
                }
                None => auth.approve_qr(&qr, &chosen.user_id, amr.clone()).await?,
            };
            if cli.json {
                println!("{}", json!(recorded));
            } else {
                println!("{}: {}", recorded.session_id, recorded.state);
            }
        }
        Command::Otp { command } => otp(cli, &auth, command).await?,
        Command::Watch {
            auto_approve,
            count,
        } => {
            watch(cli, Arc::clone(&auth), *auto_approve, *count).await?;
        }
    }
    Ok(())
}
