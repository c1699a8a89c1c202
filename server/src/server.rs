//! Running the server: bind, migrate, load keys, serve until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use tessera_protocol::api::CreatedApplication;
use tessera_protocol::pairing::ServerUrl;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::domain::Ctx;
use crate::error::ServerError;
use crate::http::router;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
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
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunningServer({})", self.local_addr)
    }
}

impl Server {
    /// Connects to the database (running migrations), loads or creates the signing keys, binds
    /// the listen address and starts serving. When this returns, connections are accepted.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
        if config.production && config.master_key.is_none() {
            return Err(StoreError::from(SecretsError::MasterKeyRequired).into());
        }
        let mut db = Database::connect_with(
            &config.database_url,
            config.max_connections,
            config.database_acquire_timeout,
        )
        .await?;
        let opened = db
            .open_secrets(config.master_key.as_deref(), config.clock.now())
            .await?;
        report_secrets(&opened);
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
                Some((listener, bound))
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
        let email = config
            .smtp
            .as_ref()
            .and_then(crate::delivery::messages::SmtpNotifier::new)
            .map(|n| Arc::new(n) as Arc<dyn crate::domain::ports::Notifier>);
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
        let attestation = crate::domain::attestation::AttestationTrust::from_config(&config)
            .map_err(|e| ServerError::InvalidInput(e.to_string()))?;
        let events = crate::domain::EventHub::new();
        let change_listener = tokio::spawn(events.clone().listen(db.clone()));
        let state = Ctx {
            clock: config.clock.clone(),
            follow_ups: Arc::from(crate::domain::follow_ups()),
            events,
            email,
            db: db.clone(),
            keys,
            config: Arc::new(config),
            public_url: public_url.clone(),
            metrics: Arc::new(Metrics::new()),
            device_push: Arc::new(crate::delivery::push::PushDelivery::new(push_clients)),
            messages,
            ciba_notifier: crate::domain::ciba::NotifierHandle::default(),
            ciba_sender,
            attestation: Arc::new(attestation),
        };
        let notifier = tokio::spawn(crate::domain::ciba::notify::run(state.clone()));
        let metrics = metrics_listener.map(|(listener, bound)| {
            let app = crate::http::metrics_router(state.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
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
        let task = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "server stopped with an error");
            }
        });
        tracing::info!(%local_addr, %public_url, "server started");
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

    /// Stops accepting connections, lets requests in flight finish, and closes the database.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.notifier.abort();
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
        self.listener.abort();
        self.purger.abort();
        self.key_reloader.abort();
        self.db.close().await;
    }
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
