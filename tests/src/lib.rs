//! Harness for Tessera's end-to-end tests: a real `tessera-server` on a loopback port with a
//! temporary SQLite database (or the PostgreSQL database `DATABASE_URL` points at), a customer
//! backend talking to it over HTTP, and devices built on the real core with software key stores
//! and file storage in temporary folders.
//!
//! Every test creates its own application, so tests can share one PostgreSQL database and run
//! in parallel.

#![warn(missing_docs)]

pub mod attestation;
pub mod load;
pub mod server_process;

use std::path::PathBuf;
use std::sync::Arc;

use tempfile::TempDir;
use tessera_core::{
    Authenticator, AuthenticatorConfig, FileStorage, KeyPurpose, KeyStore, KeyStoreError,
    SecureStorage, SoftwareKeyStore,
};
use tessera_examples::customer::CustomerApi;
use tessera_protocol::api::CreatedApplication;
use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration};
use tessera_server::{RunningServer, Server, ServerConfig};

/// Which database a test server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// The PostgreSQL database at this URL.
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend if `DATABASE_URL` is set. When `TESSERA_REQUIRE_POSTGRES=1` (as in
    /// CI) a missing `DATABASE_URL` is a failure, so the PostgreSQL half can never be skipped
    /// silently.
    pub fn postgres() -> Option<Backend> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => Some(Backend::Postgres(url)),
            _ => {
                assert!(
                    std::env::var("TESSERA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "TESSERA_REQUIRE_POSTGRES=1 but DATABASE_URL does not point at PostgreSQL"
                );
                eprintln!("DATABASE_URL not set: PostgreSQL variant skipped");
                None
            }
        }
    }
}

/// Defines one test per backend: `NAME::sqlite` and `NAME::postgres`, each calling
/// `BODY(backend).await`.
#[macro_export]
macro_rules! on_each_backend {
    ($($name:ident => $body:ident;)+) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$body($crate::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    if let Some(backend) = $crate::Backend::postgres() {
                        super::$body(backend).await;
                    }
                }
            }
        )+
    };
}

/// A running server with one application and a customer-API client for it.
pub struct TestServer {
    /// The server.
    pub server: RunningServer,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The application every call of this test uses.
    pub app: CreatedApplication,
    /// The customer backend's client, authenticated with the application's API key.
    pub customer: CustomerApi,
    /// The backend.
    pub backend: Backend,
    config: ServerConfig,
    _dir: Arc<TempDir>,
    /// The schema of its own ([`TestServer::start_isolated_with`]), dropped with the last server
    /// that uses it.
    schema: Option<Arc<SchemaGuard>>,
}

impl TestServer {
    /// Starts a server on a free loopback port and creates an application.
    ///
    /// The pairing-guess throttle is raised far above what tests reach, because on PostgreSQL
    /// every test shares one database and one client address; the throttle's own test sets it
    /// low with [`TestServer::start_with`].
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server with a configuration adjusted by `adjust`.
    pub async fn start_with(
        backend: Backend,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        let database_url = match &backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("tessera.db").display()),
            Backend::Postgres(url) => url.clone(),
        };
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            database_url: database_url.clone(),
            pairing_failures_per_ip_per_minute: 100_000,
            pairing_failures_per_code_bucket_per_minute: 100_000,
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let server = start_server(config.clone()).await;
        let app = server
            .create_application("End-to-end Test App")
            .await
            .expect("create application");
        let base_url = format!("http://{}", server.local_addr());
        let customer = CustomerApi::new(&base_url, &app.api_key);
        TestServer {
            server,
            base_url,
            app,
            customer,
            backend,
            config,
            _dir: dir,
            schema: None,
        }
    }

    /// Stops the server and starts it again on the same database and the same port.
    pub async fn restart(self) -> TestServer {
        let mut config = self.config.clone();
        config.listen = self.server.local_addr();
        self.server.shutdown().await;
        let server = start_server(config).await;
        TestServer { server, ..self }
    }

    /// Another instance of this server: the same configuration and database (its public URL
    /// too), on a free loopback port. On PostgreSQL the two share one database as instances
    /// behind a load balancer do.
    pub async fn second_instance(&self) -> RunningServer {
        Server::start(ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            public_url: Some(self.server.public_url().clone()),
            ..self.config.clone()
        })
        .await
        .expect("second instance")
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// [`TestServer::start_with`] on a database of this test's own: on PostgreSQL a new schema
    /// of the `DATABASE_URL` database (its URL sets the `search_path`), so a test that protects
    /// the database with a master key, or counts every row, leaves the shared schema alone. On
    /// SQLite every test has its own file anyway.
    pub async fn start_isolated_with(
        backend: Backend,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let (schema_url, schema) = match &backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres(url) => {
                let (schema_url, guard) = SchemaGuard::create(url, "test").await;
                (Some(schema_url), Some(Arc::new(guard)))
            }
        };
        let mut server = Self::start_with(backend, |config| {
            if let Some(url) = schema_url {
                config.database_url = url;
            }
            adjust(config)
        })
        .await;
        server.schema = schema;
        server
    }

    /// Stops the server, keeping its database (and its SQLite folder) for another start.
    pub async fn stop(self) -> StoppedServer {
        self.server.shutdown().await;
        StoppedServer {
            config: self.config,
            app: self.app,
            backend: self.backend,
            dir: self._dir,
            schema: self.schema,
        }
    }

    /// A page of the application's audit log (`GET /v1/audit?{query}`, newest first); panics
    /// unless it is answered 200.
    pub async fn audit(&self, query: &str) -> tessera_protocol::events::AuditPage {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/audit?{query}", self.base_url))
            .bearer_auth(&self.app.api_key)
            .send()
            .await
            .expect("audit");
        let status = response.status().as_u16();
        let body = response.text().await.expect("audit body");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("audit page")
    }

    /// Creates a user and returns its id.
    pub async fn user(&self, user_id: &str) -> String {
        self.customer
            .create_user(user_id, None)
            .await
            .expect("create user");
        user_id.to_string()
    }

    /// Creates a user and pairs a new device with it (direct pairing).
    pub async fn paired_user(&self, user_id: &str) -> TestDevice {
        self.user(user_id).await;
        let device = TestDevice::new().await;
        device
            .auth
            .pair(&self.pairing_uri(user_id).await, None)
            .await
            .expect("pair");
        device
    }

    /// A relying party registered as a CIBA client in poll mode that authenticates with
    /// `client_secret_basic`, as most CIBA tests and benches use one, set up from the server's
    /// discovery document.
    pub async fn poll_mode_relying_party(
        &self,
        name: impl Into<String>,
    ) -> tessera_examples::relying_party::RelyingParty {
        use tessera_examples::relying_party::{ClientCredentials, RelyingParty};
        use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode, RegisterCibaClient};
        let registered = self
            .customer
            .register_ciba_client(&RegisterCibaClient::new(
                name,
                DeliveryMode::Poll,
                ClientAuthMethod::ClientSecretBasic,
            ))
            .await
            .expect("register the CIBA client");
        let secret = registered
            .client_secret
            .expect("a client_secret_basic client is given a secret");
        RelyingParty::discover(
            &self.base_url,
            &registered.client_id,
            ClientCredentials::SecretBasic(secret),
        )
        .await
        .expect("discover the server")
    }

    /// A pairing URI for the user.
    pub async fn pairing_uri(&self, user_id: &str) -> String {
        self.customer
            .start_pairing(user_id, None)
            .await
            .expect("start pairing")
            .pairing_uri
    }
}

/// A test server that was stopped: its database and configuration, to start again.
pub struct StoppedServer {
    /// The configuration it ran with.
    pub config: ServerConfig,
    /// Its application.
    pub app: CreatedApplication,
    /// The backend.
    pub backend: Backend,
    dir: Arc<TempDir>,
    schema: Option<Arc<SchemaGuard>>,
}

impl StoppedServer {
    /// Starts a server on the same database with the configuration adjusted by `adjust`, on a
    /// free port; once, returning the error if it does not start.
    pub async fn try_start(
        &self,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Result<TestServer, tessera_server::ServerError> {
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().expect("addr");
        adjust(&mut config);
        let server = Server::start(config.clone()).await?;
        let base_url = format!("http://{}", server.local_addr());
        let customer = CustomerApi::new(&base_url, &self.app.api_key);
        Ok(TestServer {
            server,
            base_url,
            app: self.app.clone(),
            customer,
            backend: self.backend.clone(),
            config,
            _dir: self.dir.clone(),
            schema: self.schema.clone(),
        })
    }

    /// The SQLite database's files (the database, its WAL and shared memory), or nothing on
    /// PostgreSQL.
    pub fn sqlite_files(&self) -> Vec<PathBuf> {
        match self.backend {
            Backend::Sqlite => ["tessera.db", "tessera.db-wal", "tessera.db-shm"]
                .iter()
                .map(|name| self.dir.path().join(name))
                .filter(|path| path.exists())
                .collect(),
            Backend::Postgres(_) => Vec::new(),
        }
    }
}

/// A PostgreSQL schema of one test's or bench's own, dropped (with everything in it) when the
/// guard is dropped: by the last [`TestServer`] or [`StoppedServer`] that uses it, or at the end
/// of a bench. A schema a killed run left behind is dropped by a later run
/// ([`SchemaGuard::create`]).
pub struct SchemaGuard {
    url: String,
    name: String,
}

/// How long a schema a run left behind is kept before a later run drops it: longer than any run
/// of the suite or a bench, so that a run beside this one (another `cargo test` on the same
/// database) keeps its schemas.
const LEFT_BEHIND_AFTER_SECS: u64 = 6 * 60 * 60;

impl SchemaGuard {
    /// Creates a new, empty schema in the `url` database, named from `prefix`, the time, the
    /// process and a counter; answers a URL whose connections use it (`search_path`) and the
    /// guard that drops it. The first schema a process creates first drops the schemas of
    /// earlier runs (named as this one names them) older than six hours: a run that was killed
    /// could not drop its own.
    pub async fn create(url: &str, prefix: &str) -> (String, SchemaGuard) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{prefix}_{}_{}_{}",
            now.as_secs(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
        );
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        SWEPT
            .get_or_init(|| drop_left_behind(&pool, now.as_secs()))
            .await;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        (
            format!("{url}{sep}options=-c%20search_path%3D{name}"),
            SchemaGuard {
                url: url.to_string(),
                name,
            },
        )
    }
}

/// Whether `schema` is named as [`SchemaGuard::create`] names schemas and was created before
/// `before` (Unix seconds).
fn left_behind(schema: &str, before: u64) -> bool {
    let mut parts = schema.split('_');
    let (Some(prefix), Some(secs), Some(pid), Some(n), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(prefix, "test" | "bench")
        && secs.len() == 10
        && digits(secs)
        && digits(pid)
        && digits(n)
        && secs.parse::<u64>().is_ok_and(|created| created < before)
}

/// Drops the schemas of earlier runs that are older than [`LEFT_BEHIND_AFTER_SECS`] at `now`.
/// A schema that cannot be dropped now (another session holds a lock in it) is left for later.
async fn drop_left_behind(pool: &sqlx::PgPool, now: u64) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'test\\_%' OR nspname LIKE 'bench\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let before = now.saturating_sub(LEFT_BEHIND_AFTER_SECS);
    for name in names.iter().filter(|n| left_behind(n, before)) {
        let dropped = drop_schema(pool, name).await;
        if dropped.is_err() {
            eprintln!("the schema {name} an earlier run left behind was not dropped");
        }
    }
}

/// `DROP SCHEMA … CASCADE`, giving up after five seconds of waiting for a lock.
async fn drop_schema(pool: &sqlx::PgPool, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET lock_timeout = '5s'")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Dropped inside a test's or bench's runtime, which cannot be blocked on: a thread of its
        // own, with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let pool = sqlx::PgPool::connect(&url).await.ok()?;
                let result = drop_schema(&pool, &name).await;
                pool.close().await;
                result.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!(
                "the PostgreSQL schema {} was not dropped (a later run drops it)",
                self.name
            );
        }
    }
}

async fn start_server(config: ServerConfig) -> RunningServer {
    // A restart may find the port briefly in use: retry a few times.
    let mut last = None;
    for _ in 0..50 {
        match Server::start(config.clone()).await {
            Ok(server) => return server,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    panic!("server did not start: {last:?}");
}

/// A simulated device: the real core with a persistent software key store and file storage in a
/// temporary folder.
pub struct TestDevice {
    /// The device SDK.
    pub auth: Arc<Authenticator>,
    dir: Arc<TempDir>,
    config: AuthenticatorConfig,
}

impl TestDevice {
    /// The request `id`, pulled for `enrollment` (waiting up to 10 s for it).
    pub async fn pull_request(
        &self,
        enrollment: &tessera_protocol::ids::EnrollmentId,
        id: &tessera_protocol::authentication::AuthenticationId,
    ) -> tessera_core::IncomingRequest {
        self.auth
            .wait_for_requests(enrollment, std::time::Duration::from_secs(10))
            .await
            .expect("pull")
            .into_iter()
            .find(|r| &r.request_id == id)
            .expect("the request")
    }

    /// The OTP account the server provisioned with `enrollment`.
    pub async fn enrollment_otp_account(
        &self,
        enrollment: &tessera_protocol::ids::EnrollmentId,
    ) -> tessera_core::OtpAccountId {
        self.auth
            .otp_accounts()
            .await
            .into_iter()
            .find(|a| {
                matches!(&a.source, tessera_core::OtpAccountSource::Enrollment { enrollment_id } if enrollment_id == enrollment)
            })
            .expect("the enrollment's OTP account")
            .id
    }

    /// The account's passcode at Unix time `t`.
    pub async fn otp_code_at(&self, account: &tessera_core::OtpAccountId, t: i64) -> String {
        self.auth
            .one_time_passcode_at(account, t)
            .await
            .expect("a passcode")
            .code
    }

    /// A new device with a default description.
    pub async fn new() -> TestDevice {
        Self::with_config(device_config("Pixel 8")).await
    }

    /// A new device with the given configuration.
    pub async fn with_config(config: AuthenticatorConfig) -> TestDevice {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        let auth = open_device(dir.path().to_path_buf(), config.clone()).await;
        TestDevice { auth, dir, config }
    }

    /// Drops the authenticator and opens the same state again, as after an app restart.
    pub async fn reopen(self) -> TestDevice {
        let TestDevice { auth, dir, config } = self;
        drop(auth);
        let auth = open_device(dir.path().to_path_buf(), config.clone()).await;
        TestDevice { auth, dir, config }
    }

    /// The folder holding this device's key store and state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// A device configuration for tests.
pub fn device_config(model: &str) -> AuthenticatorConfig {
    AuthenticatorConfig {
        device: DeviceInfo {
            model: model.to_string(),
            os_name: "Android".into(),
            os_version: "15".into(),
            app_version: "1.0.0".into(),
            sdk_version: env!("CARGO_PKG_VERSION").into(),
            name: None,
        },
        signals: DeviceSignals {
            rooted: Some(false),
            screen_lock: Some(true),
            mdm: Some(false),
            emulator: None,
        },
        push: PushRegistration::None,
        ..AuthenticatorConfig::default()
    }
}

async fn open_device(dir: PathBuf, config: AuthenticatorConfig) -> Arc<Authenticator> {
    let key_store: Arc<dyn KeyStore> =
        Arc::new(SoftwareKeyStore::open(dir.join("keys")).expect("key store"));
    let storage: Arc<dyn SecureStorage> =
        Arc::new(FileStorage::new(dir.join("state")).expect("storage"));
    Arc::new(
        Authenticator::open(config, key_store, storage)
            .await
            .expect("open authenticator"),
    )
}

/// Changes the KeyDescription of an Android test key of a purpose.
pub type AdjustKeySpec = Box<dyn Fn(KeyPurpose, &mut attestation::KeySpec) + Send + Sync>;

/// What an [`AttestingKeyStore`] attests.
pub enum AttestationKind {
    /// Android Key Attestation chains under the root; `adjust` changes a key's KeyDescription
    /// (to craft a refusal).
    Android {
        /// Changes the KeySpec of the key of a purpose.
        adjust: AdjustKeySpec,
    },
    /// Apple App Attest objects under the root; `adjust` changes the object's spec.
    Apple {
        /// Changes the App Attest spec.
        adjust: Box<dyn Fn(&mut attestation::AppAttestSpec) + Send + Sync>,
    },
}

/// A key store that attests like a phone, under a TEST root: Android chains for the two
/// enrollment keys, or an App Attest object. Keys are the persistent software store's.
pub struct AttestingKeyStore {
    inner: SoftwareKeyStore,
    root: Arc<attestation::TestCa>,
    kind: AttestationKind,
    serial: std::sync::atomic::AtomicU64,
    /// The App Attest keys it attested, by key id (for [`TestAppAttester`]'s assertions).
    app_attest_keys: AppAttestKeys,
}

/// App Attest keys by key id, shared by an [`AttestingKeyStore`] and its [`TestAppAttester`].
pub type AppAttestKeys =
    Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, Arc<attestation::AppAttestKey>>>>;

/// What a [`TestAppAttester`] makes of its next assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionMode {
    /// Real assertions with the attested key, the counter rising by one each time (as Apple's).
    Genuine,
    /// Real assertions with the attested key, always with this counter (a replay, or a clone).
    FixedCounter(u32),
    /// Assertions by another App Attest key, counter rising.
    OtherKey,
    /// Bytes that are not an assertion.
    Garbage,
}

/// A test App Attest asserter, as the iOS wrapper's `DCAppAttestService.generateAssertion`:
/// real assertions (CBOR, ECDSA P-256) with the keys its [`AttestingKeyStore`] attested, or
/// crafted ones as its [`AssertionMode`] says.
pub struct TestAppAttester {
    keys: AppAttestKeys,
    counter: std::sync::atomic::AtomicU32,
    mode: std::sync::Mutex<AssertionMode>,
    other_key: attestation::AppAttestKey,
    app_id: String,
}

impl TestAppAttester {
    /// Makes the next assertions as `mode` says.
    pub fn set_mode(&self, mode: AssertionMode) {
        *self.mode.lock().expect("mode") = mode;
    }

    /// The counter the last genuine assertion carried.
    pub fn last_counter(&self) -> u32 {
        self.counter.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl tessera_core::AppAttestAsserter for TestAppAttester {
    fn generate_assertion(
        &self,
        key_id: &[u8],
        client_data_hash: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError> {
        let key = self
            .keys
            .lock()
            .expect("keys")
            .get(key_id)
            .cloned()
            .ok_or(KeyStoreError::NotFound)?;
        let mode = *self.mode.lock().expect("mode");
        let next = || {
            self.counter
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
        };
        Ok(match mode {
            AssertionMode::Genuine => key.assertion(&self.app_id, next(), client_data_hash),
            AssertionMode::FixedCounter(counter) => {
                key.assertion(&self.app_id, counter, client_data_hash)
            }
            AssertionMode::OtherKey => {
                self.other_key
                    .assertion(&self.app_id, next(), client_data_hash)
            }
            AssertionMode::Garbage => vec![0xa2, 0x69, 0x73, 0x69, 0x67],
        })
    }
}

impl AttestingKeyStore {
    /// Attests under `root` as `kind` says; keys live in `dir`. Leaf serial numbers count up
    /// from `first_serial`.
    pub fn new(
        dir: &std::path::Path,
        root: Arc<attestation::TestCa>,
        kind: AttestationKind,
        first_serial: u64,
    ) -> Self {
        Self {
            inner: SoftwareKeyStore::open(dir).expect("key store"),
            root,
            kind,
            serial: std::sync::atomic::AtomicU64::new(first_serial),
            app_attest_keys: AppAttestKeys::default(),
        }
    }

    /// An asserter with the App Attest keys this store attests (now and later), as the app id
    /// the store attests for.
    pub fn app_attester(&self) -> Arc<TestAppAttester> {
        Arc::new(TestAppAttester {
            keys: self.app_attest_keys.clone(),
            counter: std::sync::atomic::AtomicU32::new(0),
            mode: std::sync::Mutex::new(AssertionMode::Genuine),
            other_key: attestation::AppAttestKey::new(),
            app_id: format!("{TEST_TEAM_ID}.{}", attestation::TEST_PACKAGE),
        })
    }
}

impl KeyStore for AttestingKeyStore {
    fn generate_signing_key(
        &self,
        alias: &str,
        purpose: KeyPurpose,
    ) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.generate_signing_key(alias, purpose)
    }
    fn public_key(&self, alias: &str) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.inner.public_key(alias)
    }
    fn sign(&self, alias: &str, data: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.sign(alias, data)
    }
    fn delete_key(&self, alias: &str) -> Result<(), KeyStoreError> {
        self.inner.delete_key(alias)
    }
    fn seal(&self, alias: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.seal(alias, plaintext)
    }
    fn open(
        &self,
        alias: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyStoreError> {
        self.inner.open(alias, sealed)
    }
    fn generate_attested_signing_key(
        &self,
        alias: &str,
        purpose: KeyPurpose,
        challenge: &[u8],
    ) -> Result<Option<Vec<Vec<u8>>>, KeyStoreError> {
        let AttestationKind::Android { adjust } = &self.kind else {
            return Ok(None);
        };
        let point = self.inner.generate_signing_key(alias, purpose)?;
        let mut spec =
            attestation::KeySpec::hardware(challenge, purpose == KeyPurpose::UserVerification);
        adjust(purpose, &mut spec);
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Some(attestation::android_chain(
            &self.root, &point, &spec, serial,
        )))
    }
    fn attest_app(
        &self,
        client_data_hash: &[u8],
    ) -> Result<Option<tessera_core::AppAttestation>, KeyStoreError> {
        let AttestationKind::Apple { adjust } = &self.kind else {
            return Ok(None);
        };
        let mut spec = attestation::AppAttestSpec {
            app_id: format!("{TEST_TEAM_ID}.{}", attestation::TEST_PACKAGE),
            aaguid: *attestation::AAGUID_PRODUCTION,
            counter: 0,
            client_data_hash: client_data_hash.to_vec(),
        };
        adjust(&mut spec);
        let key = Arc::new(attestation::AppAttestKey::new());
        let (key_id, attestation_object) = key.attestation_object(&self.root, &spec);
        self.app_attest_keys
            .lock()
            .expect("keys")
            .insert(key_id.clone(), key);
        Ok(Some(tessera_core::AppAttestation {
            key_id,
            attestation_object,
        }))
    }
}

/// The Apple team id of the test app.
pub const TEST_TEAM_ID: &str = "ABCDE12345";

impl TestDevice {
    /// A new device whose key store attests as `kind` says under `root` (leaf serials from
    /// `first_serial`).
    pub async fn attesting(
        root: Arc<attestation::TestCa>,
        kind: AttestationKind,
        first_serial: u64,
    ) -> TestDevice {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        let config = device_config("Pixel 8");
        let key_store: Arc<dyn KeyStore> = Arc::new(AttestingKeyStore::new(
            &dir.path().join("keys"),
            root,
            kind,
            first_serial,
        ));
        let storage: Arc<dyn SecureStorage> =
            Arc::new(FileStorage::new(dir.path().join("state")).expect("storage"));
        let auth = Arc::new(
            Authenticator::open(config.clone(), key_store, storage)
                .await
                .expect("open authenticator"),
        );
        TestDevice { auth, dir, config }
    }

    /// A new iOS device whose key store App Attests under `root` (as a registered app) and whose
    /// app makes App Attest assertions with the returned test asserter (set on the device).
    pub async fn app_attesting(
        root: Arc<attestation::TestCa>,
    ) -> (TestDevice, Arc<TestAppAttester>) {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        let config = device_config("iPhone 16");
        let store = AttestingKeyStore::new(
            &dir.path().join("keys"),
            root,
            AttestationKind::Apple {
                adjust: Box::new(|_| {}),
            },
            0,
        );
        let attester = store.app_attester();
        let key_store: Arc<dyn KeyStore> = Arc::new(store);
        let storage: Arc<dyn SecureStorage> =
            Arc::new(FileStorage::new(dir.path().join("state")).expect("storage"));
        let auth = Arc::new(
            Authenticator::open(config.clone(), key_store, storage)
                .await
                .expect("open authenticator"),
        );
        auth.set_app_attest_asserter(Some(attester.clone()));
        (TestDevice { auth, dir, config }, attester)
    }
}

/// A device speaking the protocol directly with software keys, for tests that need to sign what
/// the real core never would (replays, wrong paths, stale times).
pub struct RawDevice {
    /// The possession key.
    pub possession: tessera_protocol::envelope::SoftwareSigningKey,
    /// The user-verification key.
    pub user_verification: tessera_protocol::envelope::SoftwareSigningKey,
    /// The installation's device key, which the registration proves.
    pub device_key: tessera_protocol::envelope::SoftwareSigningKey,
    /// The device id: the device key's id, unless a test claims another.
    pub device_id: tessera_protocol::ids::DeviceId,
}

impl Default for RawDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl RawDevice {
    /// Fresh keys, and the id of the device key.
    pub fn new() -> Self {
        let device_key = tessera_protocol::envelope::SoftwareSigningKey::generate();
        Self {
            possession: tessera_protocol::envelope::SoftwareSigningKey::generate(),
            user_verification: tessera_protocol::envelope::SoftwareSigningKey::generate(),
            device_id: tessera_protocol::ids::DeviceId::of_device_key(&device_key.public_jwk()),
            device_key,
        }
    }

    /// A signed registration (with its device key proof) and key proof for `audience`, issued
    /// at `issued_at`.
    pub fn registration(&self, audience: &str, issued_at: i64) -> (String, String) {
        use tessera_protocol::envelope::{self, MessageType};
        use tessera_protocol::pairing::{DeviceRegistration, KeyProof, ServerUrl};
        let mut registration = DeviceRegistration {
            v: 1,
            audience: ServerUrl::parse(audience).expect("url"),
            device_id: self.device_id.clone(),
            nonce: DeviceRegistration::new_nonce(),
            issued_at,
            possession_key: self.possession.public_jwk(),
            user_verification_key: self.user_verification.public_jwk(),
            device: DeviceInfo {
                model: "raw".into(),
                ..DeviceInfo::default()
            },
            signals: DeviceSignals::default(),
            push: PushRegistration::None,
            otp_transport_key: None,
            device_key: self.device_key.public_jwk(),
            device_key_proof: String::new(),
            attestation: None,
        };
        registration.device_key_proof = envelope::sign(
            MessageType::DeviceKeyProof,
            &registration.device_key_claims(),
            &self.device_key,
        )
        .expect("sign");
        let jws = envelope::sign(MessageType::Registration, &registration, &self.possession)
            .expect("sign");
        let proof = KeyProof {
            v: 1,
            registration_digest: envelope::digest_of(&jws).expect("digest"),
        };
        let proof =
            envelope::sign(MessageType::KeyProof, &proof, &self.user_verification).expect("sign");
        (jws, proof)
    }

    /// Pairs with a pairing URI over raw HTTP and returns the reply.
    pub async fn pair(&self, uri: &str) -> tessera_protocol::pairing::PairingReply {
        let parsed = tessera_protocol::pairing::PairingUri::parse(uri).expect("uri");
        let (registration, proof) =
            self.registration(parsed.server.as_str(), tessera_protocol::time::now());
        let response = reqwest::Client::new()
            .post(parsed.server.endpoint("/v1/device/pairings"))
            .json(&serde_json::json!({
                "pairing_code": parsed.code.display_form().as_str(),
                "registration": registration,
                "user_verification_proof": proof,
            }))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), 201, "pairing refused");
        let body: tessera_protocol::api::DevicePairingResponse =
            response.json().await.expect("json");
        tessera_protocol::envelope::unverified_payload(&body.server_payload).expect("reply")
    }

    /// `Authorization` header value for a device-signed call with the given claims' parts.
    pub fn authorization(
        &self,
        enrollment_id: &tessera_protocol::ids::EnrollmentId,
        method: &str,
        path: &str,
        body: &[u8],
        issued_at: i64,
        nonce: &str,
    ) -> String {
        use tessera_protocol::device_auth::{AUTHORIZATION_SCHEME, DeviceRequestClaims};
        use tessera_protocol::envelope::{self, MessageType};
        let claims = DeviceRequestClaims {
            v: 1,
            enrollment_id: enrollment_id.clone(),
            method: method.into(),
            path: path.into(),
            body_digest: tessera_protocol::canonical::Sha256Digest::of_bytes(body),
            issued_at,
            nonce: nonce.into(),
        };
        let jws =
            envelope::sign(MessageType::DeviceRequest, &claims, &self.possession).expect("sign");
        format!("{AUTHORIZATION_SCHEME} {jws}")
    }
}

/// A customer request for an approval, a transaction or a silent verification, with defaults.
pub fn ask(
    kind: tessera_protocol::authentication::AuthenticationKind,
) -> tessera_protocol::api::CreateAuthenticationRequest {
    tessera_protocol::api::CreateAuthenticationRequest::new(kind)
}

/// The Prometheus text exposition served at `{base_url}/metrics`.
pub async fn scrape_metrics(base_url: &str) -> String {
    reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("the metrics' text")
}

/// The value of the sample `name_and_labels` (a metric's name with its labels as served, such as
/// `tessera_database_connection_waiting{pool="writer"}`) in the exposition `metrics`: `None`
/// when it is not there; a sample whose value is not a number fails the test.
pub fn metric_sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line
            .strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim();
        Some(
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name_and_labels} has the value {value:?}")),
        )
    })
}

/// One full approval cycle: the relying party asks `user`'s `device` (paired as `enrollment`)
/// for an approval, the device pulls and approves it, and the relying party reads it approved.
pub async fn approval_cycle(
    customer: &CustomerApi,
    user: &str,
    device: &TestDevice,
    enrollment: &tessera_protocol::ids::EnrollmentId,
) {
    approval_cycle_steps(customer, user, device, enrollment).await;
}

/// [`approval_cycle`], answering how long each of its four requests took, as the caller saw
/// it: the customer's create, the device's pull, the device's approval, the status read.
pub async fn approval_cycle_steps(
    customer: &CustomerApi,
    user: &str,
    device: &TestDevice,
    enrollment: &tessera_protocol::ids::EnrollmentId,
) -> [std::time::Duration; 4] {
    let t0 = std::time::Instant::now();
    let created = customer
        .create_authentication(
            user,
            &ask(tessera_protocol::authentication::AuthenticationKind::Approval),
        )
        .await
        .expect("create");
    let t1 = std::time::Instant::now();
    let request = device
        .pull_request(enrollment, &created.authentication_id)
        .await;
    let t2 = std::time::Instant::now();
    device
        .auth
        .approve(&request, vec![], None)
        .await
        .expect("approve");
    let t3 = std::time::Instant::now();
    let status = customer
        .authentication(&created.authentication_id, 10)
        .await
        .expect("status");
    let t4 = std::time::Instant::now();
    assert_eq!(
        status.state,
        tessera_protocol::authentication::AuthenticationState::Approved
    );
    [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
}

/// A push flow's steps after its creation: `authenticate` starts the push, the device pulls it
/// and approves it with the number shown (if any), and the backend's poll is woken with
/// `MFA_COMPLETED`.
pub async fn push_flow_steps(
    customer: &CustomerApi,
    flow: &str,
    device: &TestDevice,
    enrollment: &tessera_protocol::ids::EnrollmentId,
) {
    use tessera_protocol::flows::{FlowAction, FlowStatus};
    let waiting = customer
        .flow_action(
            flow,
            &FlowAction::Authenticate {
                mobile_payload: None,
                authorization_payload: None,
            },
        )
        .await
        .expect("authenticate");
    let push = waiting.push.expect("a push");
    let incoming = device
        .pull_request(enrollment, &push.authentication_id)
        .await;
    device
        .auth
        .approve(&incoming, vec![], push.number_to_show)
        .await
        .expect("approve");
    let done = customer
        .flow_action(flow, &FlowAction::Poll { wait: Some(10) })
        .await
        .expect("poll");
    assert_eq!(done.status, FlowStatus::MfaCompleted);
}

/// A transaction: "Pay 120.00 EUR to ACME GmbH?" with amount, payee and IBAN, and a hidden
/// reference.
pub fn payment() -> tessera_protocol::api::CreateAuthenticationRequest {
    use tessera_protocol::authentication::{AuthenticationKind, DisplayField};
    let field = |label: &str, value: &str| DisplayField {
        label: label.into(),
        value: value.into(),
    };
    tessera_protocol::api::CreateAuthenticationRequest {
        message: Some("Pay 120.00 EUR to ACME GmbH?".into()),
        fields: vec![
            field("Amount", "120.00 EUR"),
            field("Payee", "ACME GmbH"),
            field("IBAN", "DE89 3704 0044 0532 0130 00"),
        ],
        hidden_fields: vec![field("Reference", "order-4711")],
        ..ask(AuthenticationKind::Transaction)
    }
}

/// Installs `ring` as the process's TLS crypto provider (reqwest is built without one);
/// `false` if one was installed already.
pub fn install_crypto_provider() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

#[cfg(test)]
mod schema_names {
    use super::left_behind;

    #[test]
    fn only_old_schemas_named_as_runs_name_them_are_left_behind() {
        let before = 1_800_000_000;
        assert!(left_behind("test_1799999999_4242_0", before));
        assert!(left_behind("bench_1700000000_1_17", before));
        // Newer than the cut: a run beside this one may still use it.
        assert!(!left_behind("test_1800000000_4242_0", before));
        assert!(!left_behind("test_1800000001_4242_0", before));
        // Not a run's schema, or named before schemas carried their time.
        for name in [
            "public",
            "tessera",
            "test_4242_0_679331076",
            "test_1799999999_4242",
            "test_1799999999_4242_0_1",
            "test_17999999x9_4242_0",
            "other_1799999999_4242_0",
            "test_1799999999__0",
        ] {
            assert!(!left_behind(name, before), "{name}");
        }
    }
}
