//! Running the server: bind, migrate, load keys, serve until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use tessera_protocol::api::CreatedApplication;
use tessera_protocol::pairing::ServerUrl;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use axum_server::tls_rustls::RustlsConfig;

use crate::config::{ServerConfig, TlsFiles};
use crate::domain::Ctx;
use crate::error::ServerError;
use crate::http::router;
use crate::keys::KeyRing;
use crate::metrics::{ConnectionReading, Metrics};
use crate::secrets::SecretsError;
use crate::store::secrets::{Opened, Protection};
use crate::store::{Database, StoreError};

/// Starts servers.
pub struct Server;

/// A server accepting connections. Dropping it without [`RunningServer::shutdown`] leaves the
/// server running until the runtime ends.
pub struct RunningServer {
    local_addr: SocketAddr,
    public_url: ServerUrl,
    db: Database,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    notifier: JoinHandle<()>,
    listener: JoinHandle<()>,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    purger: JoinHandle<()>,
    key_reloader: JoinHandle<()>,
    tls: Option<(TlsFiles, RustlsConfig)>,
    shutdown_grace: std::time::Duration,
    webhook_worker: JoinHandle<()>,
    /// Tells the other instances of the last changes at shutdown.
    events: crate::domain::EventHub,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunningServer({})", self.local_addr)
    }
}

impl Server {
    /// Checks every setting that can be checked without serving: URLs parse, the SMTP settings
    /// build a transport, the TLS files exist and hold a usable certificate chain and key, the
    /// attestation roots are certificates and the revocation status list is Google's format, the
    /// database URL names a supported database. The database itself is not contacted.
    pub async fn check(config: &ServerConfig) -> Result<(), ServerError> {
        Self::checked(config).await.map(drop)
    }

    /// [`Server::check`], keeping what the checks built for serving: the TLS configuration
    /// loaded from its files and the attestation trust, so [`Server::start`] does not read and
    /// parse them a second time.
    async fn checked(config: &ServerConfig) -> Result<Checked, ServerError> {
        check_database_url(&config.database_url)?;
        url::Url::parse(&config.fcm_endpoint)
            .map_err(|_| ServerError::Config("--fcm-endpoint is not a URL".into()))?;
        if let Some(apns) = &config.apns_endpoint {
            url::Url::parse(apns)
                .map_err(|_| ServerError::Config("--apns-endpoint is not a URL".into()))?;
        }
        if let Some(smtp) = &config.smtp {
            crate::delivery::messages::SmtpNotifier::new(smtp)
                .map_err(|e| ServerError::Config(e.to_string()))?;
        }
        let tls = match &config.tls {
            Some(files) => Some((files.clone(), load_tls(files).await?)),
            None => None,
        };
        if config.production && config.master_key.is_none() {
            return Err(StoreError::from(SecretsError::MasterKeyRequired).into());
        }
        let attestation = crate::domain::attestation::AttestationTrust::from_config(config)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        Ok(Checked { tls, attestation })
    }

    /// Connects to the database (running migrations), loads or creates the signing keys, binds
    /// the listen address and starts serving. When this returns, connections are accepted.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
        let Checked { tls, attestation } = Self::checked(&config).await?;
        let shutdown_grace = config.shutdown_grace;
        let header_timeout = config.http_header_timeout;
        let mut db = Database::connect_with(
            &config.database_url,
            config.max_connections,
            config.database_acquire_timeout,
            config.commit_durability,
        )
        .await?;
        let opened = db
            .open_secrets(config.master_key.as_deref(), config.clock.now())
            .await?;
        report_secrets(&opened);
        // What the engine does with the setting (or, unset, on its own), for the operator.
        let commits = db.commit_durability().await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServerError::Bind {
                addr: config.listen,
                reason: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| ServerError::Bind {
            addr: config.listen,
            reason: e.to_string(),
        })?;
        // Served by `axum_server`, which takes the standard library's listener.
        let listener = listener.into_std().map_err(|e| ServerError::Bind {
            addr: local_addr,
            reason: e.to_string(),
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let bind_error = |e: std::io::Error| ServerError::Bind {
                    addr,
                    reason: e.to_string(),
                };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_error)?;
                let bound = listener.local_addr().map_err(bind_error)?;
                let server = listener
                    .into_std()
                    .and_then(axum_server::from_tcp)
                    .map_err(bind_error)?;
                Some((with_http_timeouts(server, header_timeout), bound))
            }
            None => None,
        };
        let public_url = match &config.public_url {
            Some(url) => url.clone(),
            None => ServerUrl::parse(&format!("http://{local_addr}"))
                .map_err(|_| ServerError::InvalidInput("listen address".into()))?,
        };
        let keys = crate::domain::server_keys::load(&db, &public_url, config.clock.now())
            .await
            .map_err(|e| match e {
                crate::domain::server_keys::KeyOperationError::Store(e) => ServerError::Store(e),
                _ => ServerError::Corrupted("server keys"),
            })?;
        let keys = KeyRing::new(keys).ok_or(ServerError::Corrupted("no server key"))?;
        let email = match config.smtp.as_ref() {
            Some(smtp) => Some(Arc::new(
                crate::delivery::messages::SmtpNotifier::new(smtp)
                    .map_err(|e| ServerError::Config(e.to_string()))?,
            ) as Arc<dyn crate::domain::ports::Notifier>),
            None => None,
        };
        let push_clients = Arc::new(crate::delivery::push::PushClients::new());
        let messages = Arc::new(crate::delivery::messages::WebhookSender::new(
            push_clients.client(),
        ));
        let ciba_sender = Arc::new(crate::delivery::ciba::HttpsNotificationSender::new(
            crate::domain::ssrf::TargetPolicy {
                allow_loopback: config.ciba_allow_loopback_notifications,
                allow_private: config.ciba_allow_private_notifications,
            },
        ));
        let config_webhook_policy = (config.webhook_allow_loopback, config.webhook_allow_private);
        let mut metrics = Metrics::new();
        let connections = db.clone();
        metrics.read_connections_with(move || connection_reading(connections.connection_use()));
        let metrics = Arc::new(metrics);
        let events = crate::domain::EventHub::counted(metrics.change_notifications.clone());
        let change_listener = tokio::spawn(events.clone().listen(db.clone()));
        let events_at_shutdown = events.clone();
        let state = Ctx::new(crate::domain::CtxParts {
            compiled_policies: Default::default(),
            api_key_hints: Default::default(),
            ciba_client_hints: Default::default(),
            clock: config.clock.clone(),
            follow_ups: Arc::from(crate::domain::follow_ups()),
            events,
            email,
            db: db.clone(),
            keys,
            config: Arc::new(config),
            public_url: public_url.clone(),
            metrics,
            device_push: Arc::new(crate::delivery::push::PushDelivery::new(push_clients)),
            messages,
            ciba_notifier: crate::domain::ciba::NotifierHandle::default(),
            ciba_sender,
            webhook_sender: Arc::new(crate::delivery::webhooks::HttpsWebhookSender::new(
                crate::domain::ssrf::TargetPolicy {
                    allow_loopback: config_webhook_policy.0,
                    allow_private: config_webhook_policy.1,
                },
            )),
            attestation: Arc::new(attestation),
        });
        let notifier = tokio::spawn(crate::domain::ciba::notify::run(state.clone()));
        let webhook_worker = tokio::spawn(crate::domain::webhooks::run(state.clone()));
        let metrics = metrics_listener.map(|(server, bound)| {
            let app = crate::http::metrics_router(state.clone()).into_make_service();
            let task = tokio::spawn(async move {
                if let Err(e) = server.serve(app).await {
                    tracing::error!(error = %e, "the metrics listener stopped with an error");
                }
            });
            tracing::info!(metrics_addr = %bound, "metrics served on their own listener");
            (bound, task)
        });
        let purger = tokio::spawn(crate::domain::retention::run(state.clone()));
        let key_reloader = tokio::spawn(reload_server_keys(state.clone()));
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let (stop, stopped) = oneshot::channel::<()>();
        let bind_error = |e: std::io::Error| ServerError::Bind {
            addr: local_addr,
            reason: e.to_string(),
        };
        let handle = axum_server::Handle::new();
        // Plain HTTP and TLS alike: the same timeouts, and the same drain on shutdown.
        let task = match &tls {
            None => {
                let server = axum_server::from_tcp(listener)
                    .map_err(bind_error)?
                    .handle(handle.clone());
                let server = with_http_timeouts(server, header_timeout);
                tokio::spawn(serve_until_drained(
                    server.serve(app),
                    handle,
                    stopped,
                    shutdown_grace,
                ))
            }
            Some((_, rustls)) => {
                let server = axum_server::tls_rustls::from_tcp_rustls(listener, rustls.clone())
                    .map_err(bind_error)?
                    .handle(handle.clone());
                let server = with_http_timeouts(server, header_timeout);
                tokio::spawn(serve_until_drained(
                    server.serve(app),
                    handle,
                    stopped,
                    shutdown_grace,
                ))
            }
        };
        tracing::info!(
            %local_addr,
            %public_url,
            database = ?db.engine(),
            commits = %commits.as_str(),
            "server started"
        );
        Ok(RunningServer {
            local_addr,
            public_url,
            db,
            stop: Some(stop),
            task,
            notifier,
            listener: change_listener,
            metrics,
            purger,
            key_reloader,
            tls,
            shutdown_grace,
            webhook_worker,
            events: events_at_shutdown,
        })
    }
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address `/metrics` is served on when it has a listener of its own
    /// ([`ServerConfig::metrics_listen`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// The server's identity (public base URL).
    pub fn public_url(&self) -> &ServerUrl {
        &self.public_url
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Registers an application and returns its API key (shown once).
    pub async fn create_application(&self, name: &str) -> Result<CreatedApplication, ServerError> {
        crate::admin::create_application(&self.db, name).await
    }

    /// Whether the main listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the TLS certificate chain and key files again and serves new connections with
    /// them; connections already open keep theirs. A file that cannot be used leaves the
    /// current certificate in place and is reported. Without TLS, nothing to do.
    pub async fn reload_tls(&self) -> Result<(), ServerError> {
        let Some((files, rustls)) = &self.tls else {
            return Ok(());
        };
        rustls
            .reload_from_pem_file(&files.cert_chain, &files.private_key)
            .await
            .map_err(|e| ServerError::Tls(format!("the certificate was not reloaded: {e}")))?;
        tracing::info!("TLS certificate reloaded");
        Ok(())
    }

    /// Stops accepting connections, lets requests in flight finish (for at most
    /// [`ServerConfig::shutdown_grace`]; connections still open then are closed), and closes
    /// the database.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The listener closes the connections still open at the end of the grace period (and
        // logs it); past that and a moment more, its task is stopped here.
        let deadline = self.shutdown_grace + std::time::Duration::from_millis(500);
        if tokio::time::timeout(deadline, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_seconds = self.shutdown_grace.as_secs_f64(),
                "the listener had not stopped shortly after the shutdown grace period; stopped now"
            );
            self.task.abort();
        }
        self.notifier.abort();
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
        // Changes committed by the last requests may still wait in the outbox: send them
        // (a moment only), so waiters on other instances need not wait for their deadline.
        match tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.events.send_queued(&self.db),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the last change notifications were not sent"),
            Err(_) => tracing::warn!("the last change notifications were not sent in time"),
        }
        self.listener.abort();
        self.purger.abort();
        self.key_reloader.abort();
        self.webhook_worker.abort();
        let _ = (&mut self.webhook_worker).await;
        // A request cut off at the deadline may still hold a connection: closing waits for it
        // a moment only (the process ends anyway).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.db.close()).await;
    }
}

/// Bounds how long a connection may take to send a request's head
/// ([`ServerConfig::http_header_timeout`]). HTTP/1 starts that timer whenever it waits for a
/// head: on a new connection, and on a keep-alive connection after each answer, so an idle
/// keep-alive connection is closed after as long too. The wait for a connection's first request
/// (before HTTP/1 or HTTP/2 is even told apart, a wait no HTTP/1 timer covers) is bounded the
/// same way.
fn with_http_timeouts<A: axum_server::Address, Acc>(
    mut server: axum_server::Server<A, Acc>,
    header_timeout: std::time::Duration,
) -> axum_server::Server<A, Acc> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(header_timeout));
    server.first_request_timeout(header_timeout)
}

/// Serves until `stopped`; then stops accepting connections at once (idle keep-alive
/// connections are closed too) and lets the requests in flight finish for at most `grace`:
/// connections still open then are closed, and that is logged.
async fn serve_until_drained(
    serving: impl std::future::Future<Output = std::io::Result<()>>,
    handle: axum_server::Handle<SocketAddr>,
    stopped: oneshot::Receiver<()>,
    grace: std::time::Duration,
) {
    let drain = async {
        let _ = stopped.await;
        handle.graceful_shutdown(None);
        tokio::time::sleep(grace).await;
        // Still serving at the deadline (serving ends as soon as the last connection does).
        tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            connections = handle.connection_count(),
            "requests still in flight at the end of the shutdown grace period were cut off"
        );
        handle.shutdown();
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = serving => {
            if let Err(e) = result {
                tracing::error!(error = %e, "server stopped with an error");
            }
        }
        () = drain => {}
    }
}

/// What [`Server::checked`] built from the settings for [`Server::start`] to serve with.
struct Checked {
    /// The TLS files and the configuration loaded from them (`None`: plain HTTP).
    tls: Option<(TlsFiles, RustlsConfig)>,
    /// The attestation roots and revocation list.
    attestation: crate::domain::attestation::AttestationTrust,
}

/// The TLS configuration from the certificate chain and key files.
async fn load_tls(files: &TlsFiles) -> Result<RustlsConfig, ServerError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for (path, what) in [
        (&files.cert_chain, "--tls-cert"),
        (&files.private_key, "--tls-key"),
    ] {
        if !path.is_file() {
            return Err(ServerError::Tls(format!(
                "{what}: {} is not a readable file",
                path.display()
            )));
        }
    }
    RustlsConfig::from_pem_file(&files.cert_chain, &files.private_key)
        .await
        .map_err(|e| {
            ServerError::Tls(format!(
                "the certificate chain {} and key {} cannot be used: {e}",
                files.cert_chain.display(),
                files.private_key.display()
            ))
        })
}

/// A database URL the store can open: `sqlite:` or `postgres(ql)://` that parses.
fn check_database_url(url: &str) -> Result<(), ServerError> {
    let known = url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://");
    if !known {
        return Err(StoreError::UnsupportedDatabase.into());
    }
    if !url.starts_with("sqlite:") && url::Url::parse(url).is_err() {
        return Err(ServerError::Config(
            "--database is not a valid PostgreSQL URL".into(),
        ));
    }
    Ok(())
}

/// Says how the database's secrets are protected: a warning nobody can miss without a master key.
pub(crate) fn report_secrets(opened: &Opened) {
    match &opened.protection {
        Protection::MasterKey(kek_id) => {
            tracing::info!(master_key = %kek_id, "secrets at rest sealed under the master key")
        }
        Protection::Unprotected => tracing::warn!(
            "NO MASTER KEY: the database's secrets (OTP seeds, signing keys, push credentials) are \
             sealed with a data key stored UNPROTECTED in the same database. Anyone who reads the \
             database or a backup of it can open them. Give --master-key-file (see docs/secrets-and-retention.md); \
             --production refuses to start without one"
        ),
    }
    if opened.protected_now {
        tracing::info!("the data key is now wrapped by the master key");
    }
    if opened.sealed_rows > 0 {
        tracing::info!(
            values = opened.sealed_rows,
            "sealed secrets stored in clear"
        );
    }
}

/// Reloads the device-facing server keys every `server_key_reload_interval`: a rotation,
/// revocation or end of a grace period (which this also carries out) reaches this instance within
/// one interval. A failed reload keeps the keys in use and is tried again at the next tick.
async fn reload_server_keys(state: Ctx) {
    let mut tick = tokio::time::interval(state.config.server_key_reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match crate::domain::server_keys::load(&state.db, &state.public_url, state.now()).await {
            Ok(loaded) => {
                let sequence = loaded.sequence;
                if state.keys.replace(loaded) {
                    tracing::info!(sequence, "server keys reloaded");
                }
            }
            Err(e) => tracing::warn!(error = %e, "server keys could not be reloaded"),
        }
    }
}

/// The store's reading of its connections, as `/metrics` reports it.
fn connection_reading(used: crate::store::ConnectionUse) -> ConnectionReading {
    let bounds = crate::store::connection_use::WAIT_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY]);
    ConnectionReading {
        pool: used.kind.label(),
        max: used.max,
        in_use: used.in_use,
        idle: used.idle,
        waiting: used.waiting,
        waits: used.waits.count,
        wait_seconds: used.waits.sum_seconds,
        wait_buckets: bounds.zip(used.waits.buckets).collect(),
        timeouts: used.timeouts,
        open_failures: used.open_failures,
    }
}
