//! `tessera-server`: run the Tessera server, or administer its database.
//!
//! ```text
//! tessera-server serve [--listen 127.0.0.1:8080] [--database sqlite://tessera.db] [--public-url URL]
//!     [--master-key-file PATH] [--production] [--retention-days DAYS]
//! tessera-server admin [--database URL] create-app NAME
//! tessera-server admin [--database URL] list-apps | rotate-api-key APP_ID
//! tessera-server admin [--database URL] create-user APP_ID USER_ID [--display-name NAME]
//! tessera-server admin [--database URL] list-users APP_ID | list-devices APP_ID USER_ID
//! tessera-server admin [--database URL] set-push-webhook APP_ID (URL | --clear)
//! tessera-server admin [--database URL] set-device-policy APP_ID --additional-devices (individual | verify-with-primary)
//! tessera-server admin [--database URL] set-qr-policy APP_ID (none | extra-verification | user-approval)
//! tessera-server admin [--database URL] set-otp-policy APP_ID [--use-code] [--otp-fallback] [--fallback-after SECONDS]
//! tessera-server admin [--database URL] set-backup-channels APP_ID [sms] [voice] [email]
//! tessera-server admin [--database URL] set-mandatory-methods APP_ID [PINGID_MOBILE SMS ...]
//! tessera-server admin [--database URL] set-sms-webhook APP_ID (URL [--allow-loopback] | --clear)
//! tessera-server admin [--database URL] show-otp-policy APP_ID
//! tessera-server admin [--database URL] set-fcm APP_ID --service-account FILE
//! tessera-server admin [--database URL] set-apns APP_ID --team-id T --key-id K --key-file FILE --topic BUNDLE [--sandbox]
//! tessera-server admin [--database URL] clear-push-provider APP_ID (fcm | apns)
//! tessera-server admin [--database URL] register-ciba-client APP_ID --name NAME --mode (poll | ping | push)
//!     --auth-method (client-secret-basic | client-secret-post | private-key-jwt) [--endpoint URL]
//!     [--jwks FILE] [--signing-alg ALG] [--user-code] [--allow-loopback-notifications] [--allow-private-notifications]
//! tessera-server admin [--database URL] list-ciba-clients APP_ID | remove-ciba-client APP_ID CLIENT_ID
//! tessera-server admin [--database URL] rotate-id-token-key
//! tessera-server admin [--master-key-file PATH] generate-master-key | rewrap --new-master-key-file PATH
//! tessera-server admin [--database URL] purge [--retention-days DAYS]
//! tessera-server admin [--database URL] set-quotas APP_ID [--open-qr-sessions N] [--pending-requests N]
//! tessera-server admin [--database URL] set-policy APP_ID FILE | policy APP_ID | policy-versions APP_ID
//! tessera-server admin [--database URL] set-groups APP_ID USER_ID [GROUP...]
//! tessera-server admin [--database URL] evaluate APP_ID USER_ID --request KIND [--accessing-ip IP]
//!     [--version N] [--ip-table FILE]
//! tessera-server admin [--database URL] policy-decisions APP_ID USER_ID [--limit N]
//! tessera-server openapi
//! tessera-server serve [--config FILE] [--check-config] [--tls-cert FILE --tls-key FILE]
//!     [--shutdown-grace-seconds N]   (every serve flag also TESSERA_<NAME> and a key of FILE)
//! tessera-server admin [--database URL] backup FILE
//! tessera-server probe [URL] [--insecure-loopback]
//! ```

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tessera_protocol::api::{AuthenticationMethod, BackupChannel};
use tessera_protocol::authentication::NumberMatching;
use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
use tessera_protocol::ids::{ApplicationId, UserId};
use tessera_protocol::pairing::ServerUrl;
use tessera_server::store::applications::{AdditionalDevicePolicy, OtpPolicy, QrPolicy};
use tessera_server::{
    ApnsEnvironment, IpTable, RunningServer, SecretsError, Server, ServerConfig, ServerError,
    SmtpConfig, StoreError, TlsFiles, TrustedProxyHeader, admin, config_file,
};

/// The process's allocator: mimalloc, for the many short-lived allocations of a request
/// (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera-server",
    version,
    about = "The Tessera authentication server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--trusted-proxy-header` (`tessera_server::TrustedProxyHeader`).
#[derive(Clone, Copy, ValueEnum)]
enum TrustedProxyHeaderArg {
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl From<TrustedProxyHeaderArg> for TrustedProxyHeader {
    fn from(arg: TrustedProxyHeaderArg) -> Self {
        match arg {
            TrustedProxyHeaderArg::XForwardedFor => Self::XForwardedFor,
            TrustedProxyHeaderArg::Forwarded => Self::Forwarded,
        }
    }
}

/// `--commit-durability` (`tessera_server::CommitDurability`).
#[derive(Clone, Copy, ValueEnum)]
enum CommitDurabilityArg {
    Flushed,
    Written,
}

impl From<CommitDurabilityArg> for tessera_server::CommitDurability {
    fn from(arg: CommitDurabilityArg) -> Self {
        match arg {
            CommitDurabilityArg::Flushed => Self::Flushed,
            CommitDurabilityArg::Written => Self::Written,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AdditionalDevices {
    Individual,
    VerifyWithPrimary,
}

#[derive(Clone, Copy, ValueEnum)]
enum QrPolicyArg {
    None,
    ExtraVerification,
    UserApproval,
}

#[derive(Clone, Copy, ValueEnum)]
enum AttestationModeArg {
    Off,
    Report,
    Require,
}

impl From<AttestationModeArg> for tessera_protocol::api::AttestationMode {
    fn from(mode: AttestationModeArg) -> Self {
        match mode {
            AttestationModeArg::Off => Self::Off,
            AttestationModeArg::Report => Self::Report,
            AttestationModeArg::Require => Self::Require,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ChannelArg {
    Sms,
    Voice,
    Email,
}

// Parsed once per process: the size of `Serve`'s settings does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "TESSERA_LISTEN")]
        listen: SocketAddr,
        /// sqlite://FILE or postgres://USER:PASS@HOST/DB.
        #[arg(
            long,
            default_value = "sqlite://tessera.db",
            env = "TESSERA_DATABASE_URL"
        )]
        database: String,
        /// Public base URL (the server's identity); defaults to http://<listen address>.
        #[arg(long, env = "TESSERA_PUBLIC_URL")]
        public_url: Option<String>,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Failed pairing-code attempts allowed per client address and code bucket per minute.
        #[arg(long, default_value_t = 10)]
        pairing_failures_per_minute: u32,
        /// CSV of address blocks (CIDR,COUNTRY,REPUTATION) giving accessing devices' country
        /// and IP reputation.
        #[arg(long, env = "TESSERA_IP_TABLE")]
        ip_table: Option<std::path::PathBuf>,
        /// FCM's base URL.
        #[arg(
            long,
            default_value = "https://fcm.googleapis.com",
            env = "TESSERA_FCM_ENDPOINT"
        )]
        fcm_endpoint: String,
        /// APNs's base URL; by default production or sandbox as each application is set up.
        #[arg(long, env = "TESSERA_APNS_ENDPOINT")]
        apns_endpoint: Option<String>,
        /// CIBA: seconds clients must wait between token requests.
        #[arg(long, default_value_t = 5)]
        ciba_poll_interval: u32,
        /// CIBA: allow notification endpoints on loopback, over plain http (development only).
        #[arg(long)]
        ciba_allow_loopback_notifications: bool,
        /// CIBA: allow notification endpoints in private and link-local address ranges.
        #[arg(long)]
        ciba_allow_private_notifications: bool,
        /// SMTP server for email passcodes: smtp://HOST:PORT (plain), smtp://HOST:PORT?tls=required
        /// (STARTTLS) or smtps://USER:PASS@HOST:PORT (TLS). Without it there is no email channel.
        #[arg(long, env = "TESSERA_SMTP_URL", hide_env_values = true)]
        smtp_url: Option<String>,
        /// The sender of email passcodes.
        #[arg(
            long,
            default_value = "Tessera <no-reply@localhost>",
            env = "TESSERA_SMTP_FROM"
        )]
        smtp_from: String,
        /// A reverse proxy (CIDR, or one address) whose forwarding header (--trusted-proxy-header)
        /// names the client; repeatable. Headers from any other peer are ignored.
        #[arg(
            long = "trusted-proxy",
            value_name = "CIDR",
            env = "TESSERA_TRUSTED_PROXIES",
            value_delimiter = ',',
            value_parser = parse_trusted_proxy
        )]
        trusted_proxies: Vec<ipnet::IpNet>,
        /// The one header the trusted proxies write (append to or replace) to name the client;
        /// the other is never read, since a proxy passes it through from the client untouched.
        #[arg(long, value_enum, default_value = "x-forwarded-for")]
        trusted_proxy_header: TrustedProxyHeaderArg,
        /// Failed pairing-code attempts allowed per code bucket per minute, from all addresses
        /// together (bounds guessing however many addresses are used; see docs/network-security.md).
        #[arg(long, default_value_t = 30)]
        pairing_failures_per_code_bucket_per_minute: u32,
        /// Serve /metrics on this address only (the main listener then answers it 404).
        #[arg(long, env = "TESSERA_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        secrets: SecretsArgs,
        /// Production mode (or TESSERA_ENV=production): refuse to start without a master key.
        #[arg(long)]
        production: bool,
        /// Days finished or expired requests, sessions, challenges and tokens are kept before
        /// they are purged (0: never).
        #[arg(long, default_value_t = 30, env = "TESSERA_RETENTION_DAYS")]
        retention_days: u32,
        /// QR sessions open at once per application (unless the application sets its own).
        #[arg(long, default_value_t = 1000)]
        max_open_qr_sessions_per_app: u32,
        /// Authentication requests pending at once per application (unless the application sets
        /// its own; 4294967295: no quota, nothing counted).
        #[arg(long, default_value_t = 10_000)]
        max_pending_requests_per_app: u32,
        /// Push-bombing: user-facing requests one user may have pending at once (applications
        /// may set their own; 4294967295: no limit, nothing counted).
        #[arg(long, default_value_t = 3, env = "TESSERA_MAX_PENDING_PER_USER")]
        max_pending_per_user: u32,
        /// Push-bombing: unanswered or denied requests one user may have had within the window
        /// (approved ones do not count; applications may set their own; 4294967295: no limit,
        /// nothing counted).
        #[arg(long, default_value_t = 20, env = "TESSERA_MAX_UNAPPROVED_PER_USER")]
        max_unapproved_per_user: u32,
        /// Push-bombing: the window of --max-unapproved-per-user, in seconds.
        #[arg(long, default_value_t = 600, env = "TESSERA_PUSH_BOMBING_WINDOW")]
        push_bombing_window_seconds: u32,
        /// Seconds between reloads of the device-facing server keys: a key rotation, revocation
        /// or the end of a grace period reaches this instance within this time.
        #[arg(long, default_value_t = 30)]
        server_key_reload_seconds: u64,
        /// The longest bypass an administrator may grant a user, in seconds (see
        /// docs/bypass-and-recovery.md).
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u32).range(1..=2_592_000))]
        max_bypass_seconds: u32,
        /// A TOML file of settings (keys: these flags' names in snake case). Flags win over
        /// environment variables, which win over the file.
        #[arg(long, value_name = "FILE", env = "TESSERA_CONFIG")]
        config: Option<std::path::PathBuf>,
        /// Check every setting (files exist and parse, URLs parse), print the result and exit:
        /// 0 when the configuration is usable, 1 otherwise.
        #[arg(long)]
        check_config: bool,
        /// Serve HTTPS with this certificate chain (PEM; with --tls-key). SIGHUP reloads it.
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, value_name = "FILE")]
        tls_key: Option<std::path::PathBuf>,
        /// On SIGTERM/SIGINT: seconds requests in flight (long-polls included) may take to
        /// finish once new connections are refused.
        #[arg(long, default_value_t = 30)]
        shutdown_grace_seconds: u64,
        /// Most database connections this instance's requests hold at once (default: four per
        /// CPU core, 4 to 16); on PostgreSQL one more migrates the schema at start.
        #[arg(long, default_value_t = tessera_server::default_max_connections())]
        database_max_connections: u32,
        /// Seconds a request waits for a database connection before it is answered 503.
        #[arg(long, default_value_t = 10)]
        database_acquire_timeout_seconds: u64,
        /// When a commit returns: `flushed`, once on disk (it survives a power loss; SQLite
        /// synchronous = FULL, PostgreSQL synchronous_commit = on), or `written`, once handed to
        /// the operating system and flushed within a fraction of a second (it survives a crash
        /// of the server, not of the machine; SQLite synchronous = NORMAL, PostgreSQL
        /// synchronous_commit = off). Unset: SQLite `written`, PostgreSQL as the database sets
        /// synchronous_commit (`on` unless changed).
        #[arg(long, value_enum)]
        commit_durability: Option<CommitDurabilityArg>,
        /// Seconds /readyz waits for the database before it answers not ready.
        #[arg(long, default_value_t = 2)]
        readiness_timeout_seconds: u64,
        /// Seconds a connection may take to send a request's head (request line and headers);
        /// an idle keep-alive connection is closed after as long.
        #[arg(
            long,
            default_value_t = tessera_server::DEFAULT_HTTP_HEADER_TIMEOUT.as_secs(),
            value_parser = clap::value_parser!(u64).range(1..=3600)
        )]
        http_header_timeout_seconds: u64,
        /// Seconds a request may take, its body included, before it is answered 408; more than
        /// the 30 s a long-poll waits.
        #[arg(
            long,
            default_value_t = tessera_server::DEFAULT_HTTP_REQUEST_TIMEOUT.as_secs(),
            value_parser = clap::value_parser!(u64).range(31..=3600)
        )]
        http_request_timeout_seconds: u64,
        /// A PEM certificate trusted as an attestation root next to the shipped Google and Apple
        /// roots, for Android Key Attestation and App Attest chains (repeatable).
        #[arg(long = "attestation-root", value_name = "FILE")]
        attestation_roots: Vec<std::path::PathBuf>,
        /// Google's attestation revocation status list (JSON, as served at
        /// https://android.googleapis.com/attestation/status), read at start: certificates
        /// listed there are refused.
        #[arg(long, value_name = "FILE")]
        attestation_revocation_list: Option<std::path::PathBuf>,
        /// Event webhooks may be on loopback (and then plain http://): development and tests only.
        #[arg(long)]
        webhook_allow_loopback: bool,
        /// Event webhooks may be in private, link-local or other non-public ranges.
        #[arg(long)]
        webhook_allow_private: bool,
        /// Event webhooks: attempts at one delivery before it is given up.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
        webhook_attempts: u32,
        /// Event webhooks: seconds before the first retry (each further one waits about twice
        /// longer, with jitter, never less than the receiver's Retry-After).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        webhook_retry_base_seconds: u64,
        /// Event webhooks: seconds between the fallback sweeps of this instance's worker.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        webhook_sweep_seconds: u64,
        /// Event webhooks: seconds past one POST's timeout that an instance's claim on a delivery
        /// holds before another instance may resume it.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
        webhook_lease_margin_seconds: u64,
        /// OpenID redirect: seconds an authorization code may be redeemed.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(10..=600))]
        oidc_code_ttl: u32,
        /// OpenID redirect: seconds the user has at the prompt for an authorization request.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(60..=3600))]
        oidc_authorization_ttl: u32,
    },
    /// Administer the database; every command prints JSON.
    Admin {
        /// sqlite://FILE or postgres://USER:PASS@HOST/DB.
        #[arg(
            long,
            default_value = "sqlite://tessera.db",
            env = "TESSERA_DATABASE_URL"
        )]
        database: String,
        #[command(flatten)]
        secrets: SecretsArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Ask a running server whether it is up (for container health checks): GET the URL, exit 0
    /// on a 2xx answer within the timeout, 1 otherwise.
    Probe {
        /// The probe to call.
        #[arg(default_value = "http://127.0.0.1:8080/livez")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
        /// Accept any certificate (a TLS listener reached on a loopback address, whose
        /// certificate names the public host); refused for any other host.
        #[arg(long)]
        insecure_loopback: bool,
    },
}

/// Where the master key comes from.
#[derive(clap::Args)]
struct SecretsArgs {
    /// File holding the master key (base64 of 32 bytes) that protects the database's secrets.
    /// Without it, the key is read from TESSERA_MASTER_KEY (for containers), if set.
    #[arg(long, env = "TESSERA_MASTER_KEY_FILE")]
    master_key_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeliveryModeArg {
    Poll,
    Ping,
    Push,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuthMethodArg {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Register a CIBA client (relying party) for an application; prints its id and, for
    /// secret-based methods, its secret (shown once).
    RegisterCibaClient {
        /// The application whose users it may ask.
        application_id: String,
        /// The name shown on devices.
        #[arg(long)]
        name: String,
        /// Token delivery mode.
        #[arg(long, value_enum)]
        mode: DeliveryModeArg,
        /// Client authentication method.
        #[arg(long, value_enum)]
        auth_method: AuthMethodArg,
        /// Notification endpoint (ping and push).
        #[arg(long)]
        endpoint: Option<String>,
        /// File with the client's public JWK Set.
        #[arg(long)]
        jwks: Option<std::path::PathBuf>,
        /// Signed requests required with this asymmetric algorithm (e.g. ES256, PS256).
        #[arg(long)]
        signing_alg: Option<String>,
        /// Requests must carry the user's user_code.
        #[arg(long)]
        user_code: bool,
        /// Accept a loopback notification endpoint (development only).
        #[arg(long)]
        allow_loopback_notifications: bool,
        /// Accept a notification endpoint in a private address range.
        #[arg(long)]
        allow_private_notifications: bool,
        /// A redirect URI for the authorization code grant (redirect MFA); repeat for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
    },
    /// List an application's CIBA clients.
    ListCibaClients {
        /// The application.
        application_id: String,
    },
    /// Remove a CIBA client with its requests and tokens.
    RemoveCibaClient {
        /// The application.
        application_id: String,
        /// The client.
        client_id: String,
    },
    /// Start signing ID tokens with a new key; the old one stays published until its tokens
    /// expire.
    RotateIdTokenKey,
    /// Register an application; prints its id and API key (shown once).
    CreateApp {
        /// Display name.
        name: String,
    },
    /// List applications.
    ListApps,
    /// Issue a new API key (the old one stops working).
    RotateApiKey {
        /// The application.
        application_id: String,
    },
    /// Create a user.
    CreateUser {
        /// The application.
        application_id: String,
        /// The customer's id for the user.
        user_id: String,
        /// A name to show.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List an application's users.
    ListUsers {
        /// The application.
        application_id: String,
    },
    /// Send this application's pushes to a webhook (or stop with --clear).
    SetPushWebhook {
        /// The application.
        application_id: String,
        /// The webhook URL.
        url: Option<String>,
        /// Remove the webhook: devices pull.
        #[arg(long, conflicts_with = "url")]
        clear: bool,
    },
    /// How further devices of a user pair: each on its own (`individual`, the default) or only
    /// once the user's primary device approves them (`verify-with-primary`).
    SetDevicePolicy {
        /// The application.
        application_id: String,
        /// `individual` or `verify-with-primary`.
        #[arg(long, value_enum)]
        additional_devices: AdditionalDevices,
    },
    /// What a QR login needs after the user approves it: nothing more (`none`, the default), a
    /// silent verification of the device (`extra-verification`), or a push approval to the
    /// user (`user-approval`).
    SetQrPolicy {
        /// The application.
        application_id: String,
        /// `none`, `extra-verification` or `user-approval`.
        #[arg(value_enum)]
        policy: QrPolicyArg,
    },
    /// Replaces the application's attestation settings: the mode (`off`, `report`, `require`)
    /// and the apps whose attestations it accepts (see docs/attestation.md).
    SetAttestation {
        /// The application.
        application_id: String,
        /// `off`, `report` or `require`.
        #[arg(long, value_enum)]
        mode: AttestationModeArg,
        /// An Android app: `PACKAGE=SHA256HEX[,SHA256HEX...]`, the package name and the SHA-256
        /// digests of its signing certificates (repeatable).
        #[arg(long = "android-app", value_name = "PACKAGE=DIGESTS")]
        android_apps: Vec<String>,
        /// An iOS app in the App Attest production environment: `TEAMID.BUNDLEID` (repeatable).
        #[arg(long = "apple-app", value_name = "TEAMID.BUNDLEID")]
        apple_apps: Vec<String>,
        /// An iOS app in the App Attest development environment: `TEAMID.BUNDLEID` (repeatable).
        #[arg(long = "apple-development-app", value_name = "TEAMID.BUNDLEID")]
        apple_development_apps: Vec<String>,
    },
    /// Shows the application's attestation settings.
    Attestation {
        /// The application.
        application_id: String,
    },
    /// Passcode options of push authentications (each overridable per request): with
    /// --use-code a passcode from the app is accepted from the start; with --otp-fallback once
    /// the push cannot be delivered or is not answered within --fallback-after seconds.
    SetOtpPolicy {
        /// The application.
        application_id: String,
        /// Accept the app's passcode from the start ("use code").
        #[arg(long)]
        use_code: bool,
        /// Accept the app's passcode when push fails or goes unanswered ("OTP fallback").
        #[arg(long)]
        otp_fallback: bool,
        /// Seconds without an answer before OTP fallback is in force.
        #[arg(long, default_value_t = 30)]
        fallback_after: u32,
    },
    /// Backup channels a passcode may be sent through (none given: no backup channel).
    SetBackupChannels {
        /// The application.
        application_id: String,
        /// `sms`, `voice`, `email`.
        #[arg(value_enum)]
        channels: Vec<ChannelArg>,
    },
    /// Authentication methods every user must have registered before a push authentication
    /// (none given: no mandatory method). PINGID_MOBILE, PINGID_DESKTOP, SMS, VOICE, EMAIL,
    /// TOTP, SECURITY_KEY, PLATFORM, YUBIKEY, OATH_TOKEN.
    SetMandatoryMethods {
        /// The application.
        application_id: String,
        /// The methods.
        methods: Vec<String>,
    },
    /// Send this application's SMS and voice passcodes to a provider webhook (or stop with
    /// --clear).
    SetSmsWebhook {
        /// The application.
        application_id: String,
        /// The webhook URL.
        url: Option<String>,
        /// Remove the webhook: no SMS or voice channel.
        #[arg(long, conflicts_with = "url")]
        clear: bool,
        /// Accept a plain http:// webhook on loopback (development only).
        #[arg(long)]
        allow_loopback: bool,
    },
    /// Show the application's passcode settings.
    ShowOtpPolicy {
        /// The application.
        application_id: String,
    },
    /// Push to this application's Android devices with FCM HTTP v1 (a Google service account).
    SetFcm {
        /// The application.
        application_id: String,
        /// The service-account JSON file downloaded from the Firebase console.
        #[arg(long)]
        service_account: std::path::PathBuf,
    },
    /// Push to this application's iOS devices with APNs token authentication (a .p8 key).
    SetApns {
        /// The application.
        application_id: String,
        /// The Apple developer team id.
        #[arg(long)]
        team_id: String,
        /// The key's id.
        #[arg(long)]
        key_id: String,
        /// The .p8 key file (PKCS#8 PEM).
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// The app's bundle id.
        #[arg(long)]
        topic: String,
        /// Use the APNs sandbox (development builds) instead of production.
        #[arg(long)]
        sandbox: bool,
    },
    /// Remove the application's FCM or APNs credentials.
    ClearPushProvider {
        /// The application.
        application_id: String,
        /// `fcm` or `apns`.
        provider: String,
    },
    /// Print a new random master key (base64); store it outside the database and its backups.
    GenerateMasterKey,
    /// Wrap the database's data key with another master key (rotation of the master key, or
    /// protecting a database started without one). Afterwards only the new key opens it.
    Rewrap {
        /// File holding the new master key.
        #[arg(long)]
        new_master_key_file: std::path::PathBuf,
    },
    /// Write the audit log as JSON lines (oldest first) to standard output.
    ExportAudit {
        /// Only this application's records (default: every application's and the server's).
        #[arg(long)]
        application_id: Option<String>,
        /// Only records at or after this time (ms since the epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Only records before this time (ms since the epoch).
        #[arg(long)]
        until_ms: Option<i64>,
    },
    /// Delete what finished or expired more than --retention-days days ago.
    Purge {
        /// Days to keep.
        #[arg(long, default_value_t = 30, env = "TESSERA_RETENTION_DAYS")]
        retention_days: u32,
    },
    /// Set an application's quotas; a quota left out is the server's default.
    SetQuotas {
        /// The application.
        application_id: String,
        /// QR sessions open at once.
        #[arg(long)]
        open_qr_sessions: Option<u32>,
        /// Authentication requests pending at once.
        #[arg(long)]
        pending_requests: Option<u32>,
    },
    /// List a user's devices.
    ListDevices {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
    },
    /// Number matching and push-bombing limits of the application's authentications (replaces
    /// them all: a limit not given uses the server-wide value).
    SetAuthenticationSettings {
        /// The application.
        application_id: String,
        /// Number matching of requests that do not choose one: `off`, `choice` (pick one of
        /// three numbers) or `typed` (type the 2-digit number).
        #[arg(long, value_enum, default_value = "off")]
        number_matching: NumberMatchingArg,
        /// User-facing requests one user may have pending at once (1 to 100).
        #[arg(long)]
        max_pending_per_user: Option<u32>,
        /// Unanswered or denied requests one user may have had within the window (1 to 1000).
        #[arg(long)]
        max_unapproved_per_user: Option<u32>,
        /// The window of --max-unapproved-per-user, in seconds (60 to 86400).
        #[arg(long)]
        window_seconds: Option<u32>,
    },
    /// Show the application's number matching and push-bombing limits.
    ShowAuthenticationSettings {
        /// The application.
        application_id: String,
    },
    /// Rotate the device-facing server key: a new key signs from now on, announced in a key set
    /// signed by the current key (devices follow it at their next signed exchange); the current
    /// key keeps verifying for the grace period, then is retired.
    RotateServerKey {
        /// Seconds the current key keeps verifying (default 7 days).
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        grace_seconds: u32,
    },
    /// Copy a SQLite database, while the server runs, to a new file (VACUUM INTO); PostgreSQL is
    /// backed up with pg_dump. The master key is not in the copy: keep it apart.
    Backup {
        /// The new file (must not exist).
        to: std::path::PathBuf,
    },
    /// Revoke a device-facing server key at once: unpublished and never trusted again, not even
    /// as a link of a chain of key sets (devices that pinned only it must pair again).
    RevokeServerKey {
        /// The key id (`kid`).
        kid: String,
    },
    /// Save a new version of the application's authentication policy from a JSON file
    /// (docs/policy.md); an invalid policy is refused with the offending rule named.
    SetPolicy {
        /// The application.
        application_id: String,
        /// The policy document (JSON).
        file: std::path::PathBuf,
    },
    /// Show the application's current policy.
    Policy {
        /// The application.
        application_id: String,
    },
    /// List every version of the application's policy.
    PolicyVersions {
        /// The application.
        application_id: String,
    },
    /// Replace a user's groups (policies match on them).
    SetGroups {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
        /// The groups (none: the user has no group).
        groups: Vec<String>,
    },
    /// A dry run: what the policy would decide (nothing is sent or recorded).
    Evaluate {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
        /// The kind of request: push, transaction, qr, ciba, flow, passcode, backup_code, pairing.
        #[arg(long)]
        request: String,
        /// The accessing IP.
        #[arg(long)]
        accessing_ip: Option<String>,
        /// A policy version other than the current one.
        #[arg(long)]
        version: Option<u32>,
        /// The accessing-IP table (CSV) the server runs with.
        #[arg(long)]
        ip_table: Option<std::path::PathBuf>,
    },
    /// A user's recorded policy decisions, newest first.
    PolicyDecisions {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Grant (or replace) a user's bypass: their authentications complete without a device
    /// until it ends (docs/bypass-and-recovery.md).
    SetBypass {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
        /// How long it lasts, in seconds.
        #[arg(long, conflicts_with = "until", required_unless_present = "until")]
        duration_seconds: Option<u32>,
        /// When it ends (seconds since the epoch).
        #[arg(long)]
        until: Option<i64>,
        /// Why (required; recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// The longest bypass allowed (the server's --max-bypass-seconds).
        #[arg(long, default_value_t = 3600, env = "TESSERA_MAX_BYPASS_SECONDS")]
        max_bypass_seconds: u32,
    },
    /// A user's bypass as it stands.
    Bypass {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
    },
    /// End a user's bypass now.
    ClearBypass {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
    },
    /// Issue ten new single-use recovery codes for a user (printed once); the old ones stop
    /// working.
    IssueRecoveryCodes {
        /// The application.
        application_id: String,
        /// The user.
        user_id: String,
    },
    /// Replaces the application's FIDO2 / WebAuthn settings (see docs/fido.md).
    SetFido {
        /// The application.
        application_id: String,
        /// The relying party id (default: the host of the public URL).
        #[arg(long)]
        rp_id: Option<String>,
        /// An origin ceremonies may come from, `https://host[:port]` (repeatable; default: the
        /// server's own).
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// `required` or `preferred` (the default).
        #[arg(long, default_value = "preferred")]
        user_verification: String,
        /// `none` (the default) or `direct`.
        #[arg(long, default_value = "none")]
        attestation: String,
        /// An authenticator model accepted with `direct` attestation (repeatable).
        #[arg(long = "aaguid")]
        aaguids: Vec<String>,
        /// Register discoverable credentials (passkeys).
        #[arg(long)]
        discoverable: bool,
    },
    /// Shows the application's FIDO2 / WebAuthn settings.
    Fido {
        /// The application.
        application_id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NumberMatchingArg {
    Off,
    Choice,
    Typed,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(code: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!(
        "{}",
        json!({"error": {"code": code, "message": message.to_string()}})
    );
    ExitCode::FAILURE
}

fn server_error_code(e: &ServerError) -> &'static str {
    match e {
        ServerError::Store(StoreError::UnsupportedDatabase) => "unsupported_database",
        ServerError::Store(StoreError::Migration(_)) => "migration",
        ServerError::Store(StoreError::Corrupted(_)) => "corrupted",
        ServerError::Store(StoreError::NotFound(_)) => "not_found",
        ServerError::Store(StoreError::AlreadyExists(_)) => "already_exists",
        ServerError::Store(StoreError::Secrets(SecretsError::MasterKeyRequired))
        | ServerError::Store(StoreError::Secrets(SecretsError::MasterKeyMissing { .. })) => {
            "master_key_required"
        }
        ServerError::Store(StoreError::Secrets(SecretsError::WrongMasterKey { .. })) => {
            "wrong_master_key"
        }
        ServerError::Store(StoreError::Secrets(SecretsError::InvalidMasterKey(_))) => {
            "invalid_master_key"
        }
        ServerError::Store(StoreError::Secrets(_)) => "secrets",
        ServerError::Store(_) => "database",
        ServerError::Bind { .. } => "bind",
        ServerError::Corrupted(_) => "corrupted",
        ServerError::InvalidInput(_) => "invalid_input",
        ServerError::NotFound(_) => "not_found",
        ServerError::AlreadyExists(_) => "already_exists",
        ServerError::PushCredentials(_) => "invalid_push_credentials",
        ServerError::Config(_) => "invalid_config",
        ServerError::Tls(_) => "tls",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(e) => return fail("invalid_config", e),
    };
    match cli.command {
        Command::Serve {
            listen,
            database,
            public_url,
            log_format,
            pairing_failures_per_minute,
            ip_table,
            fcm_endpoint,
            apns_endpoint,
            ciba_poll_interval,
            ciba_allow_loopback_notifications,
            ciba_allow_private_notifications,
            smtp_url,
            smtp_from,
            trusted_proxies,
            trusted_proxy_header,
            pairing_failures_per_code_bucket_per_minute,
            metrics_listen,
            secrets,
            production,
            retention_days,
            max_open_qr_sessions_per_app,
            max_pending_requests_per_app,
            max_pending_per_user,
            max_unapproved_per_user,
            push_bombing_window_seconds,
            server_key_reload_seconds,
            max_bypass_seconds,
            config: _,
            check_config,
            tls_cert,
            tls_key,
            shutdown_grace_seconds,
            database_max_connections,
            database_acquire_timeout_seconds,
            commit_durability,
            readiness_timeout_seconds,
            http_header_timeout_seconds,
            http_request_timeout_seconds,
            attestation_roots,
            attestation_revocation_list,
            webhook_allow_loopback,
            webhook_allow_private,
            webhook_attempts,
            webhook_retry_base_seconds,
            webhook_sweep_seconds,
            webhook_lease_margin_seconds,
            oidc_code_ttl,
            oidc_authorization_ttl,
        } => {
            init_logs(log_format);
            let attestation_extra_roots = match attestation_roots
                .iter()
                .map(std::fs::read_to_string)
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(roots) => roots,
                Err(e) => return fail("invalid_config", format!("--attestation-root: {e}")),
            };
            let attestation_revocation_status = match attestation_revocation_list
                .as_deref()
                .map(std::fs::read_to_string)
                .transpose()
            {
                Ok(list) => list,
                Err(e) => {
                    return fail(
                        "invalid_config",
                        format!("--attestation-revocation-list: {e}"),
                    );
                }
            };
            let master_key = match admin::master_key_from(secrets.master_key_file.as_deref()) {
                Ok(key) => key,
                Err(e) => return fail(server_error_code(&e), e),
            };
            let production = production
                || std::env::var("TESSERA_ENV").is_ok_and(|v| v.eq_ignore_ascii_case("production"));
            let public_url = match public_url.map(|u| ServerUrl::parse(&u)).transpose() {
                Ok(u) => u,
                Err(e) => return fail("invalid_input", format!("--public-url: {e}")),
            };
            let accessing_ip_table = match ip_table.as_deref().map(IpTable::load).transpose() {
                Ok(table) => table.unwrap_or_default(),
                Err(e) => return fail("invalid_input", e),
            };
            let config = ServerConfig {
                listen,
                database_url: database,
                public_url,
                pairing_failures_per_ip_per_minute: pairing_failures_per_minute,
                accessing_ip_table,
                fcm_endpoint,
                apns_endpoint,
                ciba_poll_interval,
                ciba_allow_loopback_notifications,
                ciba_allow_private_notifications,
                smtp: smtp_url.map(|url| SmtpConfig {
                    url: zeroize::Zeroizing::new(url),
                    from: smtp_from,
                }),
                trusted_proxies,
                trusted_proxy_header: trusted_proxy_header.into(),
                pairing_failures_per_code_bucket_per_minute,
                metrics_listen,
                master_key,
                production,
                retention_days,
                max_open_qr_sessions_per_application: max_open_qr_sessions_per_app,
                max_pending_requests_per_application: max_pending_requests_per_app,
                max_pending_authentications_per_user: max_pending_per_user,
                max_recent_authentications_per_user: max_unapproved_per_user,
                push_bombing_window_seconds,
                server_key_reload_interval: std::time::Duration::from_secs(
                    server_key_reload_seconds.max(1),
                ),
                tls: match (tls_cert, tls_key) {
                    (Some(cert_chain), Some(private_key)) => Some(TlsFiles {
                        cert_chain,
                        private_key,
                    }),
                    (None, None) => None,
                    _ => {
                        return fail(
                            "invalid_config",
                            "--tls-cert and --tls-key go together: give both or neither",
                        );
                    }
                },
                shutdown_grace: std::time::Duration::from_secs(shutdown_grace_seconds),
                max_connections: database_max_connections.max(1),
                database_acquire_timeout: std::time::Duration::from_secs(
                    database_acquire_timeout_seconds.max(1),
                ),
                commit_durability: commit_durability.map(Into::into),
                readiness_timeout: std::time::Duration::from_secs(readiness_timeout_seconds.max(1)),
                http_header_timeout: std::time::Duration::from_secs(http_header_timeout_seconds),
                http_request_timeout: std::time::Duration::from_secs(http_request_timeout_seconds),
                attestation_extra_roots,
                attestation_revocation_status,
                max_bypass_seconds,
                webhook_allow_loopback,
                webhook_allow_private,
                webhook_attempts,
                webhook_retry_base: std::time::Duration::from_secs(webhook_retry_base_seconds),
                webhook_sweep: std::time::Duration::from_secs(webhook_sweep_seconds),
                webhook_lease_margin: std::time::Duration::from_secs(webhook_lease_margin_seconds),
                oidc_code_ttl,
                oidc_authorization_ttl,
                ..ServerConfig::default()
            };
            if check_config {
                return match Server::check(&config).await {
                    Ok(()) => {
                        println!("{}", json!({"config": "valid"}));
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(server_error_code(&e), e),
                };
            }
            // Handlers first: a signal that arrives right after "listening on" must stop the
            // server cleanly, not kill the process.
            let stop = match ShutdownSignal::install() {
                Ok(stop) => stop,
                Err(e) => return fail("signal", e),
            };
            let server = match Server::start(config).await {
                Ok(s) => s,
                Err(e) => return fail(server_error_code(&e), e),
            };
            let scheme = if server.is_tls() { "https" } else { "http" };
            println!("listening on {scheme}://{}", server.local_addr());
            let _ = std::io::stdout().flush();
            wait_reloading_tls(stop, &server).await;
            tracing::info!("shutting down");
            server.shutdown().await;
            ExitCode::SUCCESS
        }
        Command::Admin {
            database,
            secrets,
            command,
        } => {
            init_logs(LogFormat::Text);
            match run_admin(&database, &secrets, command).await {
                // Commands that wrote their own output (the audit export) answer null.
                Ok(serde_json::Value::Null) => ExitCode::SUCCESS,
                Ok(value) => {
                    println!("{value}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(server_error_code(&e), e),
            }
        }
        Command::Probe {
            url,
            timeout_seconds,
            insecure_loopback,
        } => match probe(&url, timeout_seconds, insecure_loopback).await {
            Ok(status) => {
                println!("{}", json!({"status": status}));
                ExitCode::SUCCESS
            }
            Err(e) => fail("probe", e),
        },
        Command::Openapi => match serde_json::to_string_pretty(&tessera_server::openapi_document())
        {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("internal", e),
        },
    }
}

/// GETs a health endpoint; the answer's status if it is 2xx.
async fn probe(url: &str, timeout_seconds: u64, insecure_loopback: bool) -> Result<u16, String> {
    let parsed = url::Url::parse(url).map_err(|_| "not a URL".to_string())?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if insecure_loopback && !loopback {
        return Err("--insecure-loopback is for loopback addresses only".into());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(timeout_seconds.max(1)))
        .danger_accept_invalid_certs(insecure_loopback)
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = answer.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("answered {status}"))
    }
}

/// A `--trusted-proxy` value: a CIDR block, or one address (a block of one).
fn parse_trusted_proxy(value: &str) -> Result<ipnet::IpNet, String> {
    let value = value.trim();
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("not a CIDR block or an address: {value}"))
}

fn parse_app(id: &str) -> Result<ApplicationId, ServerError> {
    id.parse()
        .map_err(|_| ServerError::InvalidInput("not an application id (app_...)".into()))
}

fn parse_user(id: &str) -> Result<UserId, ServerError> {
    id.parse()
        .map_err(|_| ServerError::InvalidInput("invalid user id".into()))
}

/// Reads a credentials file (at most 64 KiB); the error names the file's role, not its contents.
fn read_secret_file(
    path: &std::path::Path,
    what: &str,
) -> Result<zeroize::Zeroizing<String>, ServerError> {
    let unreadable = || ServerError::InvalidInput(format!("the {what} cannot be read as text"));
    let meta = std::fs::metadata(path).map_err(|_| unreadable())?;
    if meta.len() > 64 * 1024 {
        return Err(ServerError::InvalidInput(format!(
            "the {what} is too large"
        )));
    }
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| unreadable())
}

async fn run_admin(
    database: &str,
    secrets: &SecretsArgs,
    command: AdminCommand,
) -> Result<serde_json::Value, ServerError> {
    if let AdminCommand::GenerateMasterKey = command {
        let key = admin::generate_master_key()?;
        return Ok(json!({"master_key": key.as_str()}));
    }
    if let AdminCommand::Backup { to } = &command {
        // No secret is opened: the copy is of the sealed values.
        let db = tessera_server::Database::connect(database, 2).await?;
        let copied = admin::backup(&db, to).await;
        db.close().await;
        return Ok(json!({"backup": to, "bytes": copied?}));
    }
    let master_key = admin::master_key_from(secrets.master_key_file.as_deref())?;
    let db = admin::open_database(database, master_key.as_deref()).await?;
    // Every command but the export is recorded in the audit log, with how it ended.
    let audited = !matches!(command, AdminCommand::ExportAudit { .. });
    let (command_name, command_app) = admin_command_words();
    let kind = admin_audit_kind(&command);
    let result = async { Ok::<_, ServerError>(match command {
        AdminCommand::GenerateMasterKey | AdminCommand::Backup { .. } => json!({}),
        AdminCommand::ExportAudit {
            application_id,
            since_ms,
            until_ms,
        } => {
            let app = application_id.as_deref().map(parse_app).transpose()?;
            let mut out = std::io::stdout().lock();
            admin::export_audit(&db, app.as_ref(), since_ms, until_ms, &mut out).await?;
            serde_json::Value::Null
        }
        AdminCommand::Rewrap {
            new_master_key_file,
        } => {
            let new = admin::master_key_from(Some(&new_master_key_file))?
                .ok_or_else(|| ServerError::InvalidInput("no new master key".into()))?;
            json!(admin::rewrap(&db, master_key.as_deref(), new.as_ref()).await?)
        }
        AdminCommand::Purge { retention_days } => {
            let now = tessera_server::Clock::now(&tessera_server::SystemClock);
            json!(admin::purge(&db, retention_days, now).await?)
        }
        AdminCommand::SetQuotas {
            application_id,
            open_qr_sessions,
            pending_requests,
        } => {
            let app = parse_app(&application_id)?;
            let quotas = tessera_server::store::applications::Quotas {
                max_open_qr_sessions: open_qr_sessions,
                max_pending_requests: pending_requests,
            };
            admin::set_quotas(&db, &app, quotas).await?;
            json!({"application_id": app, "quotas": quotas})
        }
        AdminCommand::RegisterCibaClient {
            application_id,
            name,
            mode,
            auth_method,
            endpoint,
            jwks,
            signing_alg,
            user_code,
            allow_loopback_notifications,
            allow_private_notifications,
            redirect_uris,
        } => {
            let app = parse_app(&application_id)?;
            let jwks =
                match jwks {
                    Some(path) => {
                        let text = read_secret_file(&path, "JWK Set")?;
                        Some(serde_json::from_str(&text).map_err(|_| {
                            ServerError::InvalidInput("the JWK Set is not JSON".into())
                        })?)
                    }
                    None => None,
                };
            let request = RegisterCibaClient {
                client_name: name,
                backchannel_token_delivery_mode: match mode {
                    DeliveryModeArg::Poll => DeliveryMode::Poll,
                    DeliveryModeArg::Ping => DeliveryMode::Ping,
                    DeliveryModeArg::Push => DeliveryMode::Push,
                },
                backchannel_client_notification_endpoint: endpoint,
                token_endpoint_auth_method: match auth_method {
                    AuthMethodArg::ClientSecretBasic => ClientAuthMethod::ClientSecretBasic,
                    AuthMethodArg::ClientSecretPost => ClientAuthMethod::ClientSecretPost,
                    AuthMethodArg::PrivateKeyJwt => ClientAuthMethod::PrivateKeyJwt,
                },
                jwks,
                backchannel_authentication_request_signing_alg: signing_alg,
                backchannel_user_code_parameter: user_code,
                redirect_uris,
                grant_types: Vec::new(),
            };
            let config = ServerConfig {
                ciba_allow_loopback_notifications: allow_loopback_notifications,
                ciba_allow_private_notifications: allow_private_notifications,
                ..ServerConfig::default()
            };
            let now = tessera_protocol::time::now();
            json!(tessera_server::oidc::clients::register(&db, &config, &app, request, now).await?)
        }
        AdminCommand::ListCibaClients { application_id } => {
            let app = parse_app(&application_id)?;
            let clients = tessera_server::store::ciba::clients(&db, &app).await?;
            json!({"clients": clients.iter().map(|c| c.info()).collect::<Vec<_>>()})
        }
        AdminCommand::RemoveCibaClient {
            application_id,
            client_id,
        } => {
            let app = parse_app(&application_id)?;
            if !tessera_server::store::ciba::delete_client(&db, &app, &client_id).await? {
                return Err(ServerError::NotFound("CIBA client"));
            }
            json!({"removed": client_id})
        }
        AdminCommand::RotateIdTokenKey => {
            let now = tessera_protocol::time::now();
            let ttl = i64::from(ServerConfig::default().oidc_token_ttl);
            let kid = tessera_server::oidc::keys::rotate(&db, now, ttl).await?;
            json!({"signing_kid": kid})
        }
        AdminCommand::CreateApp { name } => json!(admin::create_application(&db, &name).await?),
        AdminCommand::ListApps => {
            let apps = admin::list_applications(&db).await?;
            json!({"applications": apps.iter().map(|a| json!({"application_id": a.id, "name": a.name, "created_at": a.created_at})).collect::<Vec<_>>()})
        }
        AdminCommand::RotateApiKey { application_id } => {
            json!(admin::rotate_api_key(&db, &parse_app(&application_id)?).await?)
        }
        AdminCommand::CreateUser {
            application_id,
            user_id,
            display_name,
        } => json!(
            admin::create_user(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                display_name.as_deref()
            )
            .await?
        ),
        AdminCommand::SetPushWebhook {
            application_id,
            url,
            clear,
        } => {
            if url.is_none() && !clear {
                return Err(ServerError::InvalidInput("give a URL or --clear".into()));
            }
            let app = parse_app(&application_id)?;
            admin::set_push_webhook(&db, &app, url.as_deref()).await?;
            json!({"application_id": app, "push_webhook": url})
        }
        AdminCommand::SetDevicePolicy {
            application_id,
            additional_devices,
        } => {
            let app = parse_app(&application_id)?;
            let policy = match additional_devices {
                AdditionalDevices::Individual => AdditionalDevicePolicy::Individual,
                AdditionalDevices::VerifyWithPrimary => AdditionalDevicePolicy::VerifyWithPrimary,
            };
            admin::set_additional_device_policy(&db, &app, policy).await?;
            json!({"application_id": app, "additional_devices": policy.as_str()})
        }
        AdminCommand::SetAttestation {
            application_id,
            mode,
            android_apps,
            apple_apps,
            apple_development_apps,
        } => {
            let app = parse_app(&application_id)?;
            let settings = admin::attestation_settings_from_args(
                mode.into(),
                &android_apps,
                &apple_apps,
                &apple_development_apps,
            )?;
            let stored = admin::set_attestation_settings(&db, &app, settings).await?;
            json!({"application_id": app, "attestation": stored})
        }
        AdminCommand::Attestation { application_id } => {
            let app = parse_app(&application_id)?;
            let stored = admin::attestation_settings(&db, &app).await?;
            json!({"application_id": app, "attestation": stored})
        }
        AdminCommand::SetFido {
            application_id,
            rp_id,
            origins,
            user_verification,
            attestation,
            aaguids,
            discoverable,
        } => {
            let app = parse_app(&application_id)?;
            let settings = admin::fido_settings_from_args(
                rp_id,
                origins,
                &user_verification,
                &attestation,
                aaguids,
                discoverable,
            )?;
            let stored = admin::set_fido_settings(&db, &app, settings).await?;
            json!({"application_id": app, "fido": stored})
        }
        AdminCommand::Fido { application_id } => {
            let app = parse_app(&application_id)?;
            let stored = admin::fido_settings(&db, &app).await?;
            json!({"application_id": app, "fido": stored})
        }
        AdminCommand::SetQrPolicy {
            application_id,
            policy,
        } => {
            let app = parse_app(&application_id)?;
            let policy = match policy {
                QrPolicyArg::None => QrPolicy::None,
                QrPolicyArg::ExtraVerification => QrPolicy::ExtraVerification,
                QrPolicyArg::UserApproval => QrPolicy::UserApproval,
            };
            admin::set_qr_policy(&db, &app, policy).await?;
            json!({"application_id": app, "qr_policy": policy.as_str()})
        }
        AdminCommand::SetOtpPolicy {
            application_id,
            use_code,
            otp_fallback,
            fallback_after,
        } => {
            let app = parse_app(&application_id)?;
            admin::set_otp_policy(&db, &app, use_code, otp_fallback, fallback_after).await?;
            otp_policy_json(&app, &admin::otp_policy(&db, &app).await?)
        }
        AdminCommand::SetBackupChannels {
            application_id,
            channels,
        } => {
            let app = parse_app(&application_id)?;
            let channels: Vec<BackupChannel> = channels
                .into_iter()
                .map(|c| match c {
                    ChannelArg::Sms => BackupChannel::Sms,
                    ChannelArg::Voice => BackupChannel::Voice,
                    ChannelArg::Email => BackupChannel::Email,
                })
                .collect();
            admin::set_backup_channels(&db, &app, &channels).await?;
            otp_policy_json(&app, &admin::otp_policy(&db, &app).await?)
        }
        AdminCommand::SetMandatoryMethods {
            application_id,
            methods,
        } => {
            let app = parse_app(&application_id)?;
            let methods = methods
                .iter()
                .map(|m| {
                    AuthenticationMethod::parse(m).ok_or_else(|| {
                        ServerError::InvalidInput(
                            "unknown method (PINGID_MOBILE, PINGID_DESKTOP, SMS, VOICE, EMAIL, TOTP, SECURITY_KEY, PLATFORM, YUBIKEY, OATH_TOKEN)".into(),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            admin::set_mandatory_methods(&db, &app, &methods).await?;
            otp_policy_json(&app, &admin::otp_policy(&db, &app).await?)
        }
        AdminCommand::SetSmsWebhook {
            application_id,
            url,
            clear,
            allow_loopback,
        } => {
            if url.is_none() && !clear {
                return Err(ServerError::InvalidInput("give a URL or --clear".into()));
            }
            let app = parse_app(&application_id)?;
            let secret = admin::set_sms_webhook(&db, &app, url.as_deref(), allow_loopback).await?;
            // The signing secret is shown this once; the provider verifies calls with it.
            json!({"application_id": app, "sms_webhook": url, "signing_secret": secret.as_deref().map(String::as_str)})
        }
        AdminCommand::ShowOtpPolicy { application_id } => {
            let app = parse_app(&application_id)?;
            otp_policy_json(&app, &admin::otp_policy(&db, &app).await?)
        }
        AdminCommand::SetFcm {
            application_id,
            service_account,
        } => {
            let app = parse_app(&application_id)?;
            let text = read_secret_file(&service_account, "service account")?;
            json!(admin::set_fcm(&db, &app, &text).await?)
        }
        AdminCommand::SetApns {
            application_id,
            team_id,
            key_id,
            key_file,
            topic,
            sandbox,
        } => {
            let app = parse_app(&application_id)?;
            let key = read_secret_file(&key_file, "key file")?;
            let environment = if sandbox {
                ApnsEnvironment::Sandbox
            } else {
                ApnsEnvironment::Production
            };
            json!(admin::set_apns(&db, &app, &team_id, &key_id, &key, &topic, environment).await?)
        }
        AdminCommand::ClearPushProvider {
            application_id,
            provider,
        } => {
            let app = parse_app(&application_id)?;
            admin::clear_push_provider(&db, &app, &provider).await?;
            json!({"application_id": app, "cleared": provider})
        }
        AdminCommand::ListUsers { application_id } => {
            json!({"users": admin::list_users(&db, &parse_app(&application_id)?).await?})
        }
        AdminCommand::ListDevices {
            application_id,
            user_id,
        } => json!({
            "devices": admin::list_devices(&db, &parse_app(&application_id)?, &parse_user(&user_id)?).await?
        }),
        AdminCommand::SetAuthenticationSettings {
            application_id,
            number_matching,
            max_pending_per_user,
            max_unapproved_per_user,
            window_seconds,
        } => {
            let settings = tessera_protocol::api::AuthenticationSettings {
                number_matching: match number_matching {
                    NumberMatchingArg::Off => NumberMatching::Off,
                    NumberMatchingArg::Choice => NumberMatching::Choice,
                    NumberMatchingArg::Typed => NumberMatching::Typed,
                },
                max_pending_per_user,
                max_unapproved_per_user,
                push_bombing_window_seconds: window_seconds,
            };
            json!(
                admin::set_authentication_settings(&db, &parse_app(&application_id)?, settings)
                    .await?
            )
        }
        AdminCommand::ShowAuthenticationSettings { application_id } => {
            json!(admin::authentication_settings(&db, &parse_app(&application_id)?).await?)
        }
        AdminCommand::RotateServerKey { grace_seconds } => {
            let now = tessera_protocol::time::now();
            let kid = admin::rotate_server_key(&db, now, i64::from(grace_seconds)).await?;
            json!({"signing_kid": kid, "previous_key_retires_at": now + i64::from(grace_seconds)})
        }
        AdminCommand::RevokeServerKey { kid } => {
            admin::revoke_server_key(&db, &kid, tessera_protocol::time::now()).await?;
            json!({"revoked": kid})
        }
        AdminCommand::SetPolicy {
            application_id,
            file,
        } => {
            let app = parse_app(&application_id)?;
            let text = read_secret_file(&file, "policy file")?;
            let document: tessera_protocol::policy::PolicyDocument = serde_json::from_str(&text)
                .map_err(|e| {
                    ServerError::InvalidInput(format!("the policy file is not a policy: {e}"))
                })?;
            json!(admin::set_policy(&db, &app, &document, tessera_protocol::time::now()).await?)
        }
        AdminCommand::Policy { application_id } => {
            json!(admin::policy(&db, &parse_app(&application_id)?).await?)
        }
        AdminCommand::PolicyVersions { application_id } => {
            json!(admin::policy_versions(&db, &parse_app(&application_id)?).await?)
        }
        AdminCommand::SetGroups {
            application_id,
            user_id,
            groups,
        } => json!(
            admin::set_user_groups(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                groups
            )
            .await?
        ),
        AdminCommand::Evaluate {
            application_id,
            user_id,
            request,
            accessing_ip,
            version,
            ip_table,
        } => {
            let table = match ip_table {
                Some(path) => {
                    IpTable::load(&path).map_err(|e| ServerError::InvalidInput(e.to_string()))?
                }
                None => IpTable::default(),
            };
            let request = serde_json::from_value(json!(request)).map_err(|_| {
                ServerError::InvalidInput(
                    "--request is push, transaction, qr, ciba, flow, passcode, backup_code or pairing"
                        .into(),
                )
            })?;
            let body = tessera_protocol::policy::EvaluatePolicyRequest {
                user_id: parse_user(&user_id)?,
                request: Some(request),
                accessing_ip,
                device: None,
                fields: Vec::new(),
                version,
            };
            json!(
                admin::evaluate_policy(
                    &db,
                    &table,
                    &parse_app(&application_id)?,
                    &body,
                    tessera_protocol::time::now()
                )
                .await?
            )
        }
        AdminCommand::PolicyDecisions {
            application_id,
            user_id,
            limit,
        } => json!(
            admin::policy_decisions(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                limit
            )
            .await?
        ),
        AdminCommand::SetBypass {
            application_id,
            user_id,
            duration_seconds,
            until,
            reason,
            max_bypass_seconds,
        } => json!(
            admin::set_bypass(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                &tessera_protocol::bypass::SetBypassRequest {
                    duration_seconds,
                    until,
                    reason,
                },
                max_bypass_seconds,
                tessera_server::Clock::now_ms(&tessera_server::SystemClock),
            )
            .await?
        ),
        AdminCommand::Bypass {
            application_id,
            user_id,
        } => json!(
            admin::bypass(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                tessera_protocol::time::now(),
            )
            .await?
        ),
        AdminCommand::ClearBypass {
            application_id,
            user_id,
        } => json!(
            admin::clear_bypass(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                tessera_server::Clock::now_ms(&tessera_server::SystemClock),
            )
            .await?
        ),
        AdminCommand::IssueRecoveryCodes {
            application_id,
            user_id,
        } => json!(
            admin::issue_recovery_codes(
                &db,
                &parse_app(&application_id)?,
                &parse_user(&user_id)?,
                tessera_server::Clock::now_ms(&tessera_server::SystemClock),
            )
            .await?
        ),
    }) }
    .await;
    if audited {
        admin::record_command(
            &db,
            kind,
            &command_name,
            command_app.as_deref(),
            result.is_ok(),
        )
        .await;
    }
    db.close().await;
    result
}

/// The admin subcommand's name as typed, and the first argument naming an application.
fn admin_command_words() -> (String, Option<String>) {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .iter()
        .skip_while(|a| a.as_str() != "admin")
        .skip(1)
        .find(|a| !a.starts_with('-') && !a.contains("://"))
        .cloned()
        .unwrap_or_default();
    let app = args
        .iter()
        .find(|a| a.parse::<ApplicationId>().is_ok())
        .cloned();
    (name, app)
}

/// The audit kind of an admin command: key changes have their own.
fn admin_audit_kind(command: &AdminCommand) -> &'static str {
    match command {
        AdminCommand::RotateServerKey { .. } => "server_key.rotated",
        AdminCommand::RevokeServerKey { .. } => "server_key.revoked",
        AdminCommand::RotateIdTokenKey => "id_token_key.rotated",
        AdminCommand::RotateApiKey { .. } => "api_key.rotated",
        AdminCommand::Rewrap { .. } => "master_key.rewrapped",
        AdminCommand::SetPolicy { .. } => "policy.changed",
        _ => "admin.command",
    }
}

fn otp_policy_json(app: &ApplicationId, p: &OtpPolicy) -> serde_json::Value {
    json!({
        "application_id": app,
        "use_code": p.use_code,
        "otp_fallback": p.otp_fallback,
        "otp_fallback_after": p.otp_fallback_after,
        "backup_channels": p.backup_channels,
        "mandatory_methods": p.mandatory_methods,
        "sms_webhook": p.sms_webhook_url,
    })
}

/// The command line with its settings layers (see [`config_file`]): every `serve` setting also
/// from `TESSERA_…` variables and from the `--config` file, flags first. Parse errors and
/// `--help` exit here as clap does.
fn parse_command_line() -> Result<Cli, config_file::ConfigFileError> {
    let layered = |file: Option<&std::path::Path>| {
        let mut command = Cli::command();
        let serve = command
            .find_subcommand("serve")
            .cloned()
            .map(config_file::with_environment);
        let serve = match (serve, file) {
            (Some(serve), Some(path)) => Some(config_file::apply_file(serve, path)?),
            (serve, _) => serve,
        };
        if let Some(serve) = serve {
            command = command.mut_subcommand("serve", |_| serve);
        }
        Ok::<_, config_file::ConfigFileError>(command)
    };
    let matches = try_matches(layered(None)?)?;
    let file = matches
        .subcommand_matches("serve")
        .and_then(|serve| serve.get_one::<std::path::PathBuf>("config"))
        .cloned();
    let matches = match file {
        Some(path) => try_matches(layered(Some(&path))?)?,
        None => matches,
    };
    Cli::from_arg_matches(&matches)
        .map_err(|e| config_file::ConfigFileError::CommandLine(e.kind().to_string()))
}

/// The command line's matches. `--help` and `--version` print and exit as usual, and so does any
/// other mistake outside `serve`; for `serve`, a value clap refuses (from a flag or an environment
/// variable) is a configuration error like the others (one JSON line, exit 1).
fn try_matches(command: clap::Command) -> Result<clap::ArgMatches, config_file::ConfigFileError> {
    command.try_get_matches().map_err(|e| {
        use clap::error::ErrorKind;
        let serving = std::env::args().nth(1).as_deref() == Some("serve");
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ if !serving => e.exit(),
            _ => config_file::ConfigFileError::CommandLine(config_file::describe_clap_error(
                &e.to_string(),
            )),
        }
    })
}

/// Waits for SIGTERM or SIGINT; meanwhile each SIGHUP reloads the TLS certificate (a file that
/// cannot be used keeps the current one, and the error is logged).
async fn wait_reloading_tls(stop: ShutdownSignal, server: &RunningServer) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                let stopped = stop.wait();
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        () = &mut stopped => return,
                        _ = hangup.recv() => {
                            if let Err(e) = server.reload_tls().await {
                                tracing::error!(error = %e, "SIGHUP: the TLS certificate in use is kept");
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP cannot be listened for: no TLS reload");
                stop.wait().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = server;
        stop.wait().await;
    }
}

/// SIGINT and SIGTERM, listened for from the moment it is installed.
struct ShutdownSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {},
            _ = self.interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            let _ = &mut self;
        }
    }
}
