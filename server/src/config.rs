//! Server configuration.

use std::net::SocketAddr;

use tessera_protocol::pairing::ServerUrl;

use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::ip_table::IpTable;
use crate::secrets::KeyEncryptionKey;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:8080` by default; port 0 picks a free port).
    pub listen: SocketAddr,
    /// `sqlite://FILE` (created if missing) or `postgres://USER:PASS@HOST/DB`.
    pub database_url: String,
    /// The server's public base URL: its identity in signed messages and in pairing URIs.
    /// Defaults to `http://<bound address>`.
    pub public_url: Option<ServerUrl>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of a pairing code when the request does not say, in seconds.
    pub pairing_code_ttl_default: u32,
    /// Failed pairing-code attempts allowed per client address and code bucket per minute (see
    /// `pairing_failures_per_code_bucket_per_minute`).
    pub pairing_failures_per_ip_per_minute: u32,
    /// Most database connections the requests hold at once (`store/pg_connections.rs` on
    /// PostgreSQL).
    pub max_connections: u32,
    /// How long a request waits for a database connection before it is answered
    /// `503 service_unavailable`.
    pub database_acquire_timeout: std::time::Duration,
    /// When a commit returns (flushed to disk, or written to the operating system); `None`:
    /// each engine's own way ([`CommitDurability`]).
    pub commit_durability: Option<CommitDurability>,
    /// Push-bombing limit: user-facing requests (approvals, transactions) pending at once per
    /// user. Silent verifications do not count: the user never sees them.
    pub max_pending_authentications_per_user: u32,
    /// Push-bombing limit: unapproved user-facing requests (unanswered, expired or denied,
    /// `wrong_number` included; approved ones do not count) per user within
    /// `push_bombing_window_seconds`. Applications may set their own.
    pub max_recent_authentications_per_user: u32,
    /// Largest push payload that carries the signed request itself; larger requests are pushed
    /// as their id only and pulled by the device (FCM's data limit is 4 KiB).
    pub push_max_payload_bytes: usize,
    /// Delivery attempts for one push (the first try and its retries).
    pub push_attempts: u32,
    /// Delay before the first retry; each further retry waits four times longer.
    pub push_retry_base: std::time::Duration,
    /// Country and IP reputation of accessing devices' addresses (empty: no such attributes).
    pub accessing_ip_table: IpTable,
    /// Lifetime of the request that asks the primary device to approve a new device, in seconds.
    pub device_verification_ttl: u32,
    /// How long one QR login code can be scanned, in seconds; the login page renews it before.
    pub qr_code_ttl: u32,
    /// Consecutive wrong one-time passcodes after which a user's OTP checks are locked.
    pub otp_max_failures: u32,
    /// Time steps of clock drift accepted on either side of the server's.
    pub otp_drift_steps: u32,
    /// HOTP tokens: counter values looked ahead of the expected one (a token pressed without
    /// being used); a match resynchronises the counter.
    pub hotp_look_ahead: u32,
    /// How email passcodes are sent (`None`: no email channel).
    pub smtp: Option<SmtpConfig>,
    /// Lifetime of a backup (SMS, voice, email) passcode, in seconds.
    pub backup_code_ttl: u32,
    /// Wrong codes allowed per backup passcode before it is void.
    pub backup_code_attempts: u32,
    /// Backup passcodes sent per user and channel within `backup_code_window` seconds.
    pub backup_codes_per_window: u32,
    /// The rate limit's window, in seconds.
    pub backup_code_window: u32,
    /// FCM's base URL (`https://fcm.googleapis.com`); tests point it at a local receiver.
    pub fcm_endpoint: String,
    /// APNs's base URL. `None` picks `https://api.push.apple.com`, or
    /// `https://api.sandbox.push.apple.com` for the sandbox environment; tests point it at a
    /// local receiver (a plain `http://` endpoint is spoken to in HTTP/2 with prior knowledge).
    pub apns_endpoint: Option<String>,
    /// CIBA: lifetime of a backchannel request when the client does not ask for less, in seconds.
    pub ciba_default_expiry: u32,
    /// CIBA: the longest `requested_expiry` honoured, in seconds.
    pub ciba_max_expiry: u32,
    /// CIBA: the `interval` clients must wait between token requests, in seconds.
    pub ciba_poll_interval: u32,
    /// CIBA: whether notification endpoints may be on loopback (and then plain `http://`). For
    /// development and tests only.
    pub ciba_allow_loopback_notifications: bool,
    /// CIBA: whether notification endpoints may be in private, link-local or other
    /// non-public address ranges.
    pub ciba_allow_private_notifications: bool,
    /// CIBA: delivery attempts for one ping or push notification.
    pub ciba_notification_attempts: u32,
    /// CIBA: delay before the first notification retry; each further retry waits twice longer.
    pub ciba_notification_retry_base: std::time::Duration,
    /// CIBA: how often each instance looks for finished requests to notify (answers recorded by
    /// this instance are notified at once).
    pub ciba_notification_sweep: std::time::Duration,
    /// Lifetime of access tokens and ID tokens, in seconds.
    pub oidc_token_ttl: u32,
    /// Lifetime of refresh tokens, in seconds.
    pub oidc_refresh_token_ttl: u32,
    /// Where the server reads the time (the system clock; tests move a manual one).
    pub clock: std::sync::Arc<dyn Clock>,
    /// Reverse proxies whose forwarding header ([`ServerConfig::trusted_proxy_header`]) names
    /// the client (empty: every client address is the TCP peer's). See
    /// docs/network-security.md, "Behind a reverse proxy".
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The one forwarding header the trusted proxies write (`X-Forwarded-For` by default); the
    /// other is never read, since a proxy passes a header it does not write through untouched.
    pub trusted_proxy_header: TrustedProxyHeader,
    /// Failed pairing-code attempts allowed per code bucket (the code's first two characters,
    /// 1,024 buckets) per minute from all addresses together: bounds the guesses checked
    /// against live codes however many addresses a guesser uses.
    pub pairing_failures_per_code_bucket_per_minute: u32,
    /// Where `/metrics` is served instead of the main listener (`None`: on the main listener).
    pub metrics_listen: Option<SocketAddr>,
    /// The key-encryption key ("master key") that wraps the database's data key, which seals
    /// every secret column. `None`: the data key is stored unwrapped (a loud warning at start;
    /// refused in production mode and once the database is protected by a master key).
    pub master_key: Option<std::sync::Arc<dyn KeyEncryptionKey>>,
    /// Production mode: refuse to start without a master key.
    pub production: bool,
    /// Days finished or expired authentications, QR sessions, passcode challenges, CIBA requests,
    /// tokens and rejected enrollments are kept before they are purged (0: never purged).
    pub retention_days: u32,
    /// How often each instance purges what is past retention.
    pub retention_sweep: std::time::Duration,
    /// QR sessions open at once per application, unless the application sets its own quota.
    pub max_open_qr_sessions_per_application: u32,
    /// Authentication requests pending at once per application (customer API and CIBA), unless
    /// the application sets its own quota.
    pub max_pending_requests_per_application: u32,
    /// Push-bombing window of `max_recent_authentications_per_user`, in seconds (default 600).
    /// Applications may set their own.
    pub push_bombing_window_seconds: u32,
    /// How often each instance reloads the device-facing server keys (a rotation, revocation or
    /// the end of a grace period reaches every instance within this time, without a restart).
    pub server_key_reload_interval: std::time::Duration,
    /// Serve HTTPS with these PEM files instead of plain HTTP (`None`: plain HTTP, e.g. behind a
    /// TLS-terminating proxy). [`crate::RunningServer::reload_tls`] reads them again.
    pub tls: Option<TlsFiles>,
    /// On shutdown, how long requests in flight (long-polls included) may take to finish after
    /// the listener stopped accepting; connections still open then are closed.
    pub shutdown_grace: std::time::Duration,
    /// The longest `/readyz` waits for the database before it answers not ready.
    pub readiness_timeout: std::time::Duration,
    /// How long a connection may take to send a request's head (request line and headers),
    /// counted from when the server starts waiting for it: on a new connection, and on a
    /// keep-alive connection after each answer, so an idle keep-alive connection is closed after
    /// this long too. Applies to HTTP/1 on every listener (the metrics listener included); it
    /// also bounds the wait for a connection's first request (HTTP/1 or HTTP/2).
    pub http_header_timeout: std::time::Duration,
    /// The longest a request may take, from its head to its answer's head (its body read
    /// included): past it the request is answered `408` and its connection closed. A long-poll
    /// waits at most 30 s, so this must be longer (the command line refuses 30 s or less);
    /// an answer's body streamed afterwards (the audit export) is not limited.
    pub http_request_timeout: std::time::Duration,
    /// Webhooks: whether endpoints may be on loopback (and then plain `http://`). For
    /// development and tests only.
    pub webhook_allow_loopback: bool,
    /// Webhooks: whether endpoints may be in private, link-local or other non-public ranges.
    pub webhook_allow_private: bool,
    /// Webhooks: attempts at one delivery before it is given up.
    pub webhook_attempts: u32,
    /// Webhooks: the wait before the first retry; each further retry waits about twice longer
    /// (with jitter, and never less than the receiver's `Retry-After`).
    pub webhook_retry_base: std::time::Duration,
    /// Webhooks: the fallback sweep of each instance's worker (it is woken at once when an
    /// event is queued, and when a retry falls due).
    pub webhook_sweep: std::time::Duration,
    /// Webhooks: how long past one POST's timeout an instance's claim on a delivery holds
    /// before another instance may resume it.
    pub webhook_lease_margin: std::time::Duration,
    /// Lifetime of an authorization code (OIDC redirect MFA), in seconds (default 60).
    pub oidc_code_ttl: u32,
    /// Lifetime of an authorization request's flow (the time the user has at the prompt), in
    /// seconds (60–3600, default 600).
    pub oidc_authorization_ttl: u32,
    /// Extra attestation trust anchors (PEM certificates), trusted for Android Key Attestation
    /// and Apple App Attest chains next to the shipped Google and Apple roots
    /// (`--attestation-root`).
    pub attestation_extra_roots: Vec<String>,
    /// The attestation revocation status list, in Google's JSON format
    /// (`--attestation-revocation-list`); `None`: no certificate is considered revoked.
    pub attestation_revocation_status: Option<String>,
    /// The longest bypass an administrator may grant a user, in seconds (`--max-bypass-seconds`,
    /// default 3600).
    pub max_bypass_seconds: u32,
}

/// The certificate chain and private key files of the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM): the server's certificate first, then its intermediates.
    pub cert_chain: std::path::PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub private_key: std::path::PathBuf,
}

/// FCM's production base URL.
pub const FCM_DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";

/// [`ServerConfig::http_header_timeout`] when not configured: above the 60 s idle timeout with
/// which common load balancers and proxies keep connections to the server open for reuse, so
/// the server does not close one just as the proxy sends a request on it.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// [`ServerConfig::http_request_timeout`] when not configured: twice the longest long-poll
/// (30 s).
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The forwarding header that names the client when the TCP peer is a trusted proxy
/// (`--trusted-proxy-header`).
///
/// Only the header the operator's proxy writes (appends to, or replaces) can be trusted: a
/// proxy passes any other header from the client through untouched, so reading it would let the
/// client choose its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustedProxyHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`,
    /// Envoy's `use_remote_address`, most load balancers). The default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// The database pool's size when not configured: four connections per CPU core of this
/// machine, at least 4 and at most 16. More connections than the database's cores can serve do
/// not add throughput: the extra transactions wait inside the database instead of in the
/// pool's queue, holding their row locks meanwhile, and the slowest requests wait longer
/// (docs/benchmarks.md, "The database pool's size"). With PostgreSQL on a larger host of its
/// own, set `--database-max-connections` from that host's cores.
pub fn default_max_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .clamp(4, 16)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://tessera.db".into(),
            public_url: None,
            max_body_bytes: 64 * 1024,
            pairing_code_ttl_default: 600,
            pairing_failures_per_ip_per_minute: 10,
            max_connections: default_max_connections(),
            database_acquire_timeout: std::time::Duration::from_secs(10),
            commit_durability: None,
            max_pending_authentications_per_user: 3,
            max_recent_authentications_per_user: 20,
            push_max_payload_bytes: 4000,
            push_attempts: 4,
            push_retry_base: std::time::Duration::from_millis(200),
            accessing_ip_table: IpTable::default(),
            device_verification_ttl: 300,
            qr_code_ttl: 60,
            otp_max_failures: 5,
            otp_drift_steps: 1,
            hotp_look_ahead: 10,
            smtp: None,
            backup_code_ttl: 300,
            backup_code_attempts: 3,
            backup_codes_per_window: 3,
            backup_code_window: 600,
            fcm_endpoint: FCM_DEFAULT_ENDPOINT.to_string(),
            clock: crate::clock::system(),
            apns_endpoint: None,
            ciba_default_expiry: 120,
            ciba_max_expiry: 600,
            ciba_poll_interval: 5,
            ciba_allow_loopback_notifications: false,
            ciba_allow_private_notifications: false,
            ciba_notification_attempts: 5,
            ciba_notification_retry_base: std::time::Duration::from_secs(1),
            ciba_notification_sweep: std::time::Duration::from_secs(1),
            oidc_token_ttl: 3600,
            oidc_refresh_token_ttl: 30 * 24 * 3600,
            trusted_proxies: Vec::new(),
            trusted_proxy_header: TrustedProxyHeader::XForwardedFor,
            pairing_failures_per_code_bucket_per_minute: 30,
            metrics_listen: None,
            master_key: None,
            production: false,
            retention_days: 30,
            retention_sweep: std::time::Duration::from_secs(3600),
            max_open_qr_sessions_per_application: 1000,
            max_pending_requests_per_application: 10_000,
            push_bombing_window_seconds: 600,
            server_key_reload_interval: std::time::Duration::from_secs(30),
            tls: None,
            shutdown_grace: std::time::Duration::from_secs(30),
            readiness_timeout: std::time::Duration::from_secs(2),
            http_header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
            http_request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            webhook_allow_loopback: false,
            webhook_allow_private: false,
            webhook_attempts: 10,
            webhook_retry_base: std::time::Duration::from_secs(5),
            webhook_sweep: std::time::Duration::from_secs(30),
            webhook_lease_margin: std::time::Duration::from_secs(20),
            oidc_code_ttl: 60,
            oidc_authorization_ttl: 600,
            attestation_extra_roots: Vec::new(),
            attestation_revocation_status: None,
            max_bypass_seconds: 3600,
        }
    }
}

/// How the server sends email.
#[derive(Clone)]
pub struct SmtpConfig {
    /// `smtp://HOST:PORT` (plain), `smtp://HOST:PORT?tls=required` (STARTTLS) or
    /// `smtps://USER:PASS@HOST:PORT` (TLS). May hold credentials: never printed.
    pub url: Zeroizing<String>,
    /// The sender address (`Tessera <no-reply@example.com>`).
    pub from: String,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// When a write transaction's commit returns to the request that made it.
///
/// Unset (`None` where the store takes an `Option`), each engine keeps its own way: SQLite
/// [`CommitDurability::Written`] (`synchronous = NORMAL` in WAL mode, the log synced at each
/// checkpoint, every 200 ms), PostgreSQL whatever the database, role or server sets for
/// `synchronous_commit` (`on` unless changed there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDurability {
    /// Once the commit is flushed to disk: it survives a power loss or a crash of the
    /// operating system. SQLite `synchronous = FULL` (the log is synced at every commit),
    /// PostgreSQL `synchronous_commit = on`.
    Flushed,
    /// Once the commit is written to the operating system: it survives a crash of the server
    /// process, and a crash of the machine loses at most the last fraction of a second of
    /// commits (never the database). SQLite `synchronous = NORMAL` (the log is synced at each
    /// checkpoint, every 200 ms), PostgreSQL `synchronous_commit = off` (its WAL writer flushes
    /// every `wal_writer_delay`, 200 ms unless changed, at most three times that late).
    Written,
}

impl CommitDurability {
    /// The setting's value as `--commit-durability` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitDurability::Flushed => "flushed",
            CommitDurability::Written => "written",
        }
    }
}
