//! A domain context for unit tests: domain operations called directly, without HTTP, on a real
//! database (a fresh SQLite file, or PostgreSQL when `DATABASE_URL` names one), with a clock that
//! moves only when a test advances it, and delivery that records what it was asked to send
//! instead of sending it (the clouds a push would reach are not reachable from a test).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::api::{
    AuthenticationStatus, BackupChannel, CreateAuthenticationRequest, DevicePairingRequest,
    EnrollmentState,
};
use tessera_protocol::authentication::{AuthenticationRequest, AuthenticationResponse, Decision};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::device_auth::{AUTHORIZATION_SCHEME, DeviceRequestClaims};
use tessera_protocol::envelope::{self, MessageType, SoftwareSigningKey};
use tessera_protocol::ids::{ApplicationId, AuthenticationId, DeviceId, EnrollmentId, UserId};
use tessera_protocol::pairing::{
    DeviceInfo, DeviceRegistration, DeviceSignals, KeyProof, PushRegistration,
    RegistrationAttestation, ServerUrl,
};

use super::outcome::{DomainEvent, FollowUpFuture};
use super::ports::{
    CibaNotificationSender, DevicePush, MessageSender, NotificationError, NotificationFuture,
    Notifier, PushFuture, WebhookFuture, WebhookSender,
};
use super::{Ctx, CtxParts};
use crate::clock::{Clock, ManualClock};
use crate::config::ServerConfig;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::store::Database;
use crate::store::applications::{self, Application, SealedPushSettings};
use crate::store::authentications::Authentication;
use crate::store::enrollments::{self, Enrollment};

/// The endings each test's follow-up saw, by authentication: a test reads its own ids only, so
/// tests running side by side do not see each other's.
static ENDINGS_SEEN: LazyLock<Mutex<HashMap<AuthenticationId, usize>>> =
    LazyLock::new(Mutex::default);

/// A follow-up registered beside the server's own: counts the endings announced per
/// authentication.
fn count_ending<'a>(_ctx: &'a Ctx, event: &'a DomainEvent) -> FollowUpFuture<'a> {
    let (record, _) = event.ended();
    if let Ok(mut seen) = ENDINGS_SEEN.lock() {
        *seen.entry(record.id.clone()).or_insert(0) += 1;
    }
    Box::pin(async { Ok(()) })
}

/// How many times the ending of `id` was announced to the follow-ups.
pub(crate) fn endings_announced(id: &AuthenticationId) -> usize {
    ENDINGS_SEEN
        .lock()
        .ok()
        .and_then(|seen| seen.get(id).copied())
        .unwrap_or(0)
}

/// Device pushes asked of the delivery: the authentication and the device, in order. Pushes
/// start after the request that asks for them returned, so tests wait for them.
#[derive(Default)]
pub(crate) struct RecordedPushes {
    asked: Mutex<Vec<(AuthenticationId, EnrollmentId)>>,
    pushed: tokio::sync::Notify,
}

impl RecordedPushes {
    /// The pushes asked so far.
    pub(crate) fn all(&self) -> Vec<(AuthenticationId, EnrollmentId)> {
        self.asked.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The pushes asked once there are at least `n` (panics after ten seconds without).
    pub(crate) async fn at_least(&self, n: usize) -> Vec<(AuthenticationId, EnrollmentId)> {
        loop {
            let pushed = self.pushed.notified();
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            tokio::time::timeout(std::time::Duration::from_secs(10), pushed)
                .await
                .expect("the push was asked for");
        }
    }
}

impl DevicePush for RecordedPushes {
    fn push(
        &self,
        _ctx: Ctx,
        record: Authentication,
        device: Enrollment,
        _settings: Option<SealedPushSettings>,
    ) -> PushFuture {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push((record.id, device.enrollment_id));
        }
        self.pushed.notify_waiters();
        Box::pin(async { Some("none") })
    }
}

/// Passcode messages asked of a provider (email, or the SMS and voice webhook): the channel,
/// the destination and the code, in order.
#[derive(Default)]
pub(crate) struct RecordedMessages(Mutex<Vec<(BackupChannel, String, String)>>);

impl RecordedMessages {
    /// The messages sent so far: the destination and the code.
    pub(crate) fn all(&self) -> Vec<(String, String)> {
        self.sent()
            .into_iter()
            .map(|(_, to, code)| (to, code))
            .collect()
    }

    /// The messages sent so far, with the channel each was sent through.
    pub(crate) fn sent(&self) -> Vec<(BackupChannel, String, String)> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Notifier for RecordedMessages {
    fn send<'a>(&'a self, notice: &'a super::ports::Notice) -> super::ports::SendFuture<'a> {
        if let Ok(mut sent) = self.0.lock() {
            sent.push((notice.channel, notice.to.clone(), notice.code.to_string()));
        }
        Box::pin(async { Ok(()) })
    }
}

/// The SMS and voice provider of every application's webhook: records the messages instead of
/// posting them (the webhook must still be set on the application, as the server requires).
struct RecordedSmsVoice(Arc<RecordedMessages>);

impl MessageSender for RecordedSmsVoice {
    fn sms_voice(
        &self,
        _url: String,
        _secret: zeroize::Zeroizing<String>,
    ) -> Option<Arc<dyn Notifier>> {
        Some(self.0.clone())
    }
}

/// Sends nothing anywhere: CIBA notifications and webhooks are not what these tests are about
/// (their own modules test them; passcodes by email, SMS and voice are recorded).
struct NoOutgoingCalls;

impl CibaNotificationSender for NoOutgoingCalls {
    fn post<'a>(
        &'a self,
        _endpoint: &'a url::Url,
        _bearer: &'a str,
        _body: &'a serde_json::Value,
    ) -> NotificationFuture<'a> {
        Box::pin(async { Err(NotificationError::Client) })
    }
}

impl WebhookSender for NoOutgoingCalls {
    fn post<'a>(
        &'a self,
        _endpoint: &'a url::Url,
        _headers: Vec<(&'static str, String)>,
        _body: String,
    ) -> WebhookFuture<'a> {
        Box::pin(async { Err(NotificationError::Client) })
    }
}

/// The results of tasks spawned side by side, in the order they were spawned (each awaited;
/// a task that panicked fails the test).
pub(crate) async fn joined<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("the task ran"));
    }
    results
}

/// `copies` sends of what `send` starts, each on a task of its own so that they run side by
/// side on the test's worker threads (as copies of one request sent at once): their results,
/// in order.
pub(crate) async fn sent_at_once<T, F>(copies: usize, send: impl Fn() -> F) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    joined((0..copies).map(|_| tokio::spawn(send())).collect()).await
}

/// How long the tests' waiters wait: far longer than any wake-up takes, so that a waiter that
/// answers only at its deadline ([`woken`]) shows a change that woke nobody.
pub(crate) const WAITER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// What a waiter spawned with [`WAITER_WAIT`] read, which must come well before its deadline:
/// its final read at the deadline would find the change all the same, so only the time shows
/// an announcement that woke nobody.
pub(crate) async fn woken<T>(waiter: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(WAITER_WAIT / 2, waiter)
        .await
        .expect("woken before its deadline")
        .expect("the waiter ran")
}

/// Returns once a waiter waits on `topic` (waiters subscribe before they read, so what is
/// announced from then on wakes them).
pub(crate) async fn until_waited(ctx: &Ctx, topic: &super::events::Topic) {
    for _ in 0..5_000 {
        if ctx.events.waiters_on(topic) > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("nobody waits on {topic:?}");
}

/// A crowd test's seed: `TESSERA_CROWD_SEED` when set (to replay a failing run), else a random
/// one; printed either way.
pub(crate) fn crowd_seed() -> u64 {
    let seed = std::env::var("TESSERA_CROWD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("TESSERA_CROWD_SEED={seed}");
    seed
}

/// A domain context over a fresh database with one application.
pub(crate) struct TestDomain {
    /// What the domain operations take.
    pub ctx: Ctx,
    /// The context's clock: tests move it instead of sleeping.
    pub clock: ManualClock,
    /// The device pushes the operations asked for.
    pub pushes: Arc<RecordedPushes>,
    /// The passcodes sent by email.
    pub emails: Arc<RecordedMessages>,
    /// The passcodes sent by SMS and voice call (through an application's provider webhook).
    pub sms: Arc<RecordedMessages>,
    /// The application the tests work in.
    pub app: Application,
    /// Keeps the SQLite file's folder while the test runs.
    _dir: Option<tempfile::TempDir>,
}

impl TestDomain {
    /// Both engines, configured for a crowd test: no push-bombing limit refuses a request (a
    /// crowd's unanswered requests stay pending until its end).
    pub(crate) async fn each_engine_for_crowds() -> Vec<Arc<Self>> {
        Self::each_engine_for_crowds_with(|_| {}).await
    }

    /// [`TestDomain::each_engine_for_crowds`], each configuration changed by `change` too.
    pub(crate) async fn each_engine_for_crowds_with(
        change: impl Fn(&mut ServerConfig),
    ) -> Vec<Arc<Self>> {
        Self::each_engine_with(|| {
            let mut config = ServerConfig {
                max_pending_authentications_per_user: u32::MAX,
                max_recent_authentications_per_user: u32::MAX,
                ..ServerConfig::default()
            };
            change(&mut config);
            config
        })
        .await
        .into_iter()
        .map(Arc::new)
        .collect()
    }

    /// A crowd: `users` users of the application, each with a paired device, each running `run`
    /// with a generator of its own seeded from `seed`, all side by side on tasks of their own.
    /// Each user with what its run returned, in order.
    pub(crate) async fn crowd<T, Fut>(
        self: &Arc<Self>,
        users: usize,
        seed: u64,
        run: impl Fn(Arc<Self>, UserId, TestDevice, rand::rngs::StdRng) -> Fut,
    ) -> Vec<(UserId, T)>
    where
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        use rand::SeedableRng;
        let mut tasks = Vec::with_capacity(users);
        for u in 0..users {
            let (user, device) = self.user_with_device(&format!("crowd-{u}")).await;
            let rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(u as u64));
            let ran = run(self.clone(), user.clone(), device, rng);
            tasks.push(tokio::spawn(async move { (user, ran.await) }));
        }
        joined(tasks).await
    }

    /// Records the expiries of the application's requests that expired unanswered by this
    /// context's clock (the server's sweep, limited to this test's application: tests that
    /// share a database each move a clock of their own). How many it recorded.
    pub(crate) async fn sweep_expired(&self) -> usize {
        let mut swept = 0;
        loop {
            let n = super::audit::sweep_expired_of(&self.ctx, Some(&self.app.id))
                .await
                .expect("swept");
            if n == 0 {
                return swept;
            }
            swept += n;
        }
    }

    /// A context on a fresh SQLite database.
    pub(crate) async fn sqlite() -> Self {
        Self::sqlite_with(ServerConfig::default()).await
    }

    async fn sqlite_with(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        Self::on(&url, Some(dir), config).await
    }

    /// A context on the PostgreSQL database `DATABASE_URL` names (a new application in it), or
    /// `None` when it names none (a failure under `TESSERA_REQUIRE_POSTGRES=1`:
    /// [`crate::store::postgres_url_for_tests`]).
    pub(crate) async fn postgres() -> Option<Self> {
        Self::postgres_with(ServerConfig::default()).await
    }

    async fn postgres_with(config: ServerConfig) -> Option<Self> {
        let url = crate::store::postgres_url_for_tests("run the domain's tests on PostgreSQL")?;
        Some(Self::on(&url, None, config).await)
    }

    /// Both engines: SQLite always, PostgreSQL when `DATABASE_URL` names it.
    pub(crate) async fn each_engine() -> Vec<Self> {
        let mut domains = vec![Self::sqlite().await];
        if let Some(pg) = Self::postgres().await {
            domains.push(pg);
        }
        domains
    }

    /// [`TestDomain::each_engine`] with the attestation root `root_pem` trusted beside the
    /// shipped ones (as the operator's `--attestation-root`), for attestations built under a
    /// test root (`attestation::fixtures`).
    pub(crate) async fn each_engine_trusting(root_pem: &str) -> Vec<Self> {
        Self::each_engine_with(|| ServerConfig {
            attestation_extra_roots: vec![root_pem.to_string()],
            ..ServerConfig::default()
        })
        .await
    }

    /// [`TestDomain::each_engine`], each configured as `config` makes it.
    pub(crate) async fn each_engine_with(config: impl Fn() -> ServerConfig) -> Vec<Self> {
        let mut domains = vec![Self::sqlite_with(config()).await];
        if let Some(pg) = Self::postgres_with(config()).await {
            domains.push(pg);
        }
        domains
    }

    async fn on(url: &str, dir: Option<tempfile::TempDir>, config: ServerConfig) -> Self {
        let clock = ManualClock::new();
        let mut db = Database::connect(url, 8).await.expect("database");
        let public_url = ServerUrl::parse("https://auth.example.com").expect("server URL");
        db.open_secrets(None, clock.now())
            .await
            .expect("the secrets' key");
        let keys = super::server_keys::load(&db, &public_url, clock.now())
            .await
            .map_err(|e| e.to_string())
            .map(KeyRing::new)
            .expect("server keys")
            .expect("a key ring");
        let config = ServerConfig {
            clock: Arc::new(clock.clone()),
            ..config
        };
        let attestation =
            super::attestation::AttestationTrust::from_config(&config).expect("attestation");
        let mut follow_ups = super::follow_ups();
        follow_ups.push(("count_ending", count_ending));
        let pushes = Arc::new(RecordedPushes::default());
        let emails = Arc::new(RecordedMessages::default());
        let sms = Arc::new(RecordedMessages::default());
        let ctx = Ctx::new(CtxParts {
            db: db.clone(),
            keys,
            clock: Arc::new(clock.clone()),
            config: Arc::new(config),
            public_url,
            events: super::EventHub::new(),
            metrics: Arc::new(Metrics::new()),
            device_push: pushes.clone(),
            ciba_notifier: super::ciba::NotifierHandle::default(),
            ciba_sender: Arc::new(NoOutgoingCalls),
            email: Some(emails.clone()),
            messages: Arc::new(RecordedSmsVoice(sms.clone())),
            follow_ups: Arc::from(follow_ups),
            webhook_sender: Arc::new(NoOutgoingCalls),
            attestation: Arc::new(attestation),
            compiled_policies: Default::default(),
            api_key_hints: Default::default(),
            ciba_client_hints: Default::default(),
        });
        let app = Application {
            id: ApplicationId::generate(),
            name: "Bank".into(),
            created_at: clock.now(),
        };
        applications::insert(&db, &app, &format!("digest {}", app.id))
            .await
            .expect("application");
        Self {
            ctx,
            clock,
            pushes,
            emails,
            sms,
            app,
            _dir: dir,
        }
    }

    /// A relying party registered in the test application as `registration` asks: its client
    /// id and secret.
    pub(crate) async fn client(
        &self,
        registration: tessera_protocol::ciba::RegisterCibaClient,
    ) -> (String, String) {
        let registered =
            super::ciba::clients::register_client(&self.ctx, &self.app.id, registration)
                .await
                .expect("registered");
        (
            registered.client_id,
            registered.client_secret.expect("a secret"),
        )
    }

    /// A new user of the application, with no device yet.
    pub(crate) async fn user(&self, name: &str) -> UserId {
        let user: UserId = name.parse().expect("user id");
        crate::store::users::insert(
            &self.ctx.db,
            &self.app.id,
            &user,
            None,
            None,
            self.clock.now(),
        )
        .await
        .expect("user");
        user
    }

    /// A new user of the application with one paired (active, primary) device.
    pub(crate) async fn user_with_device(&self, name: &str) -> (UserId, TestDevice) {
        let user = self.user(name).await;
        let device = self.device_of(&user, true).await;
        (user, device)
    }

    /// Another device of `user`, paired now (`primary` or not).
    pub(crate) async fn device_of(&self, user: &UserId, primary: bool) -> TestDevice {
        let possession = SoftwareSigningKey::generate();
        let user_verification = SoftwareSigningKey::generate();
        let device_key = SoftwareSigningKey::generate().public_jwk();
        let enrollment = Enrollment {
            enrollment_id: EnrollmentId::generate(),
            application_id: self.app.id.clone(),
            user_id: user.clone(),
            device_id: DeviceId::of_device_key(&device_key),
            possession_key: possession.public_jwk(),
            user_verification_key: user_verification.public_jwk(),
            device_info: DeviceInfo {
                model: "Pixel 9".into(),
                ..DeviceInfo::default()
            },
            signals: DeviceSignals::default(),
            push: PushRegistration::None,
            is_primary: primary,
            registration_digest: format!("registration {}", rand::random::<u64>()),
            server_payload: String::new(),
            paired_at: self.clock.now(),
            last_seen_at: self.clock.now(),
            status: EnrollmentState::Active,
            verification_id: None,
            push_stale_at: None,
            device_key_thumbprint: None,
            attestation: None,
            app_attest: None,
        };
        let mut w = self.ctx.db.write().await.expect("write");
        enrollments::insert(w.conn().await.expect("connection"), &enrollment)
            .await
            .expect("enrollment");
        w.commit().await.expect("commit");
        TestDevice {
            enrollment,
            possession,
            user_verification,
        }
    }

    /// How many rows `table` holds for `user` of the test's application, read directly (what
    /// a deletion left behind, or a cap let through).
    pub(crate) async fn rows_of(&self, table: &str, user: &UserId) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE application_id = $1 AND user_id = $2"
        ))
        .bind(self.app.id.as_str())
        .bind(user.as_str())
        .fetch_one(self.ctx.db.pool())
        .await
        .expect("count")
    }

    /// `user`'s device `enrollment` unpaired by the customer, on a task of its own, once
    /// `pause` has passed (so that what races it comes first in some rounds).
    pub(crate) fn unpairing_after(
        &self,
        user: &UserId,
        enrollment: &EnrollmentId,
        pause: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let (ctx, app, user) = (self.ctx.clone(), self.app.id.clone(), user.clone());
        let enrollment = enrollment.clone();
        tokio::spawn(async move {
            pause.await;
            super::devices::remove_device(&ctx, &app, &user, enrollment.as_str())
                .await
                .expect("unpaired");
        })
    }

    /// The test application's further devices pair only once the user's primary device
    /// approves ("verify new devices with the primary device").
    pub(crate) async fn verify_new_devices_with_primary(&self) {
        assert!(
            crate::store::applications::set_additional_device_policy(
                &self.ctx.db,
                &self.app.id,
                crate::store::applications::AdditionalDevicePolicy::VerifyWithPrimary,
            )
            .await
            .expect("set")
        );
    }

    /// `user`'s bypass cleared in a write left open: a clearing in flight, committed (or rolled
    /// back) by the caller once what races it has started.
    pub(crate) async fn clearing_bypass_in_flight(
        &self,
        user: &UserId,
    ) -> crate::store::Write<'static> {
        let mut clearing = self.ctx.db.write().await.expect("write");
        sqlx::query("DELETE FROM user_bypasses WHERE application_id = $1 AND user_id = $2")
            .bind(self.app.id.as_str())
            .bind(user.as_str())
            .execute(&mut *clearing)
            .await
            .expect("deleted");
        clearing
    }

    /// What a customer backend relays for a new device: its mobile payload (relay pairing uses
    /// no code; the registration is the one the device makes for it).
    pub(crate) fn relayed_payload(&self) -> tessera_protocol::api::RelayPairingRequest {
        let phone = Registering::new(&self.ctx.public_url, "", self.clock.now(), false);
        tessera_protocol::api::RelayPairingRequest {
            mobile_payload: tessera_protocol::pairing::MobilePayload {
                v: tessera_protocol::PROTOCOL_VERSION,
                registration: phone.request.registration,
                user_verification_proof: phone.request.user_verification_proof,
            }
            .encode()
            .expect("a payload"),
        }
    }

    /// How many OpenID tokens the application's clients hold for `user`.
    pub(crate) async fn tokens_of(&self, user: &UserId) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM oidc_tokens t JOIN ciba_clients c ON c.client_id = t.client_id \
             WHERE c.application_id = $1 AND t.user_id = $2",
        )
        .bind(self.app.id.as_str())
        .bind(user.as_str())
        .fetch_one(self.ctx.db.pool())
        .await
        .expect("count")
    }

    /// `copies` copies of passcode `code` answering authentication `id`, sent at once (each on
    /// a task of its own): what each was told, in order.
    pub(crate) async fn passcode_sent_at_once(
        &self,
        id: &AuthenticationId,
        code: &str,
        copies: usize,
    ) -> Vec<Result<AuthenticationStatus, super::DomainError>> {
        sent_at_once(copies, || {
            let (ctx, app, id, code) = (
                self.ctx.clone(),
                self.app.id.clone(),
                id.clone(),
                code.to_string(),
            );
            async move { super::otp::answer_authentication(&ctx, &app, id.as_str(), &code).await }
        })
        .await
    }

    /// Asks `user`'s primary device for an approval (the application's settings otherwise).
    pub(crate) async fn ask(&self, user: &UserId, body: serde_json::Value) -> AuthenticationStatus {
        let mut request = serde_json::json!({"kind": "approval"});
        if let (Some(into), Some(from)) = (request.as_object_mut(), body.as_object()) {
            into.extend(from.clone());
        }
        let request: CreateAuthenticationRequest =
            serde_json::from_value(request).expect("a request");
        super::authentication::create(&self.ctx, &self.app, user, request)
            .await
            .expect("created")
    }

    /// The signed requests `device` pulls now, verified with the server's published keys as a
    /// device verifies them.
    pub(crate) async fn pull(&self, device: &TestDevice) -> Vec<AuthenticationRequest> {
        let path = format!(
            "/v1/device/enrollments/{}/requests",
            device.enrollment.enrollment_id
        );
        let authorization = device.call("GET", &path, b"", self.clock.now());
        let call = super::device_auth::DeviceCall {
            authorization: Some(&authorization),
            method: "GET",
            path: &path,
            body: b"",
        };
        let pending = super::authentication::pull(
            &self.ctx,
            call,
            device.enrollment.enrollment_id.as_str(),
            std::time::Duration::ZERO,
        )
        .await
        .expect("pulled");
        pending
            .requests
            .iter()
            .map(|jws| self.verified(jws, MessageType::AuthenticationRequest))
            .collect()
    }

    /// `device` answers `request` with `decision` after biometrics, choosing the number the
    /// request shows when it matches numbers (as the user reads it from the other screen).
    pub(crate) async fn answered_by(
        &self,
        device: &TestDevice,
        request: &AuthenticationRequest,
        decision: Decision,
    ) -> Result<tessera_protocol::api::ResponseRecorded, super::DomainError> {
        let number =
            crate::store::authentications::get(&self.ctx.db, &request.request_id, self.clock.now())
                .await
                .expect("read")
                .and_then(|a| a.number_to_show);
        let signed = device.answer(request, decision, number, self.clock.now());
        super::authentication::answer(
            &self.ctx,
            request.request_id.as_str(),
            &signed,
            "198.51.100.7",
        )
        .await
    }

    /// The request `id` among those `device` pulls now (panics when it is not there).
    pub(crate) async fn pulled(
        &self,
        device: &TestDevice,
        id: &AuthenticationId,
    ) -> AuthenticationRequest {
        self.pull(device)
            .await
            .into_iter()
            .find(|r| &r.request_id == id)
            .expect("the device pulls it")
    }

    /// A message of type `typ` the server signed, verified with its published keys as a device
    /// verifies it.
    pub(crate) fn verified<T: serde::de::DeserializeOwned>(
        &self,
        jws: &str,
        typ: MessageType,
    ) -> T {
        envelope::verify_with_set(jws, typ, &self.ctx.keys.public_set())
            .expect("signed by a published key")
            .payload
    }
}

/// A device about to pair: its keys and the pairing request it sends.
pub(crate) struct Registering {
    /// What the device sends with the code.
    pub request: DevicePairingRequest,
    /// The registration's envelope digest (the enrollment is found by it once paired).
    pub digest: Sha256Digest,
    /// The possession key.
    pub possession: SoftwareSigningKey,
    /// The user-verification key.
    pub user_verification: SoftwareSigningKey,
}

impl Registering {
    /// A new device's registration for this server with `code`, signed at `now` as the core
    /// signs it (its device key proves the device id; the possession key signs the registration;
    /// the user-verification key signs its digest). `forge_device_key_proof`: the proof is
    /// signed by another key than the device key it names.
    pub(crate) fn new(
        audience: &ServerUrl,
        code: &str,
        now: i64,
        forge_device_key_proof: bool,
    ) -> Self {
        Self::signed(audience, code, now, forge_device_key_proof, |_| None)
    }

    /// [`Registering::new`] carrying the platform attestation `attest` makes for the
    /// registration (whose attestation challenge and keys it reads).
    pub(crate) fn attested(
        audience: &ServerUrl,
        code: &str,
        now: i64,
        attest: impl FnOnce(&DeviceRegistration) -> RegistrationAttestation,
    ) -> Self {
        Self::signed(audience, code, now, false, |r| Some(attest(r)))
    }

    fn signed(
        audience: &ServerUrl,
        code: &str,
        now: i64,
        forge_device_key_proof: bool,
        attest: impl FnOnce(&DeviceRegistration) -> Option<RegistrationAttestation>,
    ) -> Self {
        let device_key = SoftwareSigningKey::generate();
        let possession = SoftwareSigningKey::generate();
        let user_verification = SoftwareSigningKey::generate();
        let mut registration = DeviceRegistration {
            v: PROTOCOL_VERSION,
            audience: audience.clone(),
            device_id: DeviceId::of_device_key(&device_key.public_jwk()),
            nonce: DeviceRegistration::new_nonce(),
            issued_at: now,
            possession_key: possession.public_jwk(),
            user_verification_key: user_verification.public_jwk(),
            device: DeviceInfo {
                model: "Pixel 9".into(),
                os_name: "Android".into(),
                os_version: "15".into(),
                app_version: "1.0".into(),
                ..DeviceInfo::default()
            },
            signals: DeviceSignals::default(),
            push: PushRegistration::None,
            otp_transport_key: None,
            device_key: device_key.public_jwk(),
            device_key_proof: String::new(),
            attestation: None,
        };
        registration.attestation = attest(&registration);
        let proof_signer = if forge_device_key_proof {
            SoftwareSigningKey::generate()
        } else {
            device_key
        };
        registration.device_key_proof = envelope::sign(
            MessageType::DeviceKeyProof,
            &registration.device_key_claims(),
            &proof_signer,
        )
        .expect("signed");
        let registration =
            envelope::sign(MessageType::Registration, &registration, &possession).expect("signed");
        let digest = envelope::digest_of(&registration).expect("digest");
        let proof = KeyProof {
            v: PROTOCOL_VERSION,
            registration_digest: digest,
        };
        let user_verification_proof =
            envelope::sign(MessageType::KeyProof, &proof, &user_verification).expect("signed");
        Self {
            request: DevicePairingRequest {
                pairing_code: code.to_string(),
                registration,
                user_verification_proof,
            },
            digest,
            possession,
            user_verification,
        }
    }
}

impl Registering {
    /// The device once paired as `enrollment`, signing with the keys it registered.
    pub(crate) fn paired(self, enrollment: Enrollment) -> TestDevice {
        TestDevice {
            enrollment,
            possession: self.possession,
            user_verification: self.user_verification,
        }
    }
}

/// A paired device: its enrollment as stored and the keys it signs with.
pub(crate) struct TestDevice {
    /// The enrollment.
    pub enrollment: Enrollment,
    /// The possession key (device calls, silent answers).
    pub possession: SoftwareSigningKey,
    /// The user-verification key (answers after biometrics).
    pub user_verification: SoftwareSigningKey,
}

impl TestDevice {
    /// The `Authorization` header of a device call `method path` with `body`, signed at `now`
    /// with a fresh nonce.
    pub(crate) fn call(&self, method: &str, path: &str, body: &[u8], now: i64) -> String {
        let claims = DeviceRequestClaims {
            v: PROTOCOL_VERSION,
            enrollment_id: self.enrollment.enrollment_id.clone(),
            method: method.into(),
            path: path.into(),
            body_digest: Sha256Digest::of_bytes(body),
            issued_at: now,
            nonce: format!("{:032x}", rand::random::<u128>()),
        };
        let jws =
            envelope::sign(MessageType::DeviceRequest, &claims, &self.possession).expect("signed");
        format!("{AUTHORIZATION_SCHEME} {jws}")
    }

    /// The device's answer to `request`, as the app makes it after the user confirmed with
    /// biometrics (signed with the user-verification key, `amr` `fpt`) at `now`, choosing
    /// `number` when the request matches numbers.
    pub(crate) fn answer(
        &self,
        request: &AuthenticationRequest,
        decision: Decision,
        number: Option<u32>,
        now: i64,
    ) -> String {
        self.answer_signed_by(
            &self.user_verification,
            &["fpt"],
            request,
            decision,
            number,
            now,
        )
    }

    /// [`TestDevice::answer`] without the user's biometrics: signed with the possession key,
    /// `amr` `swk`.
    pub(crate) fn answer_with_possession_key(
        &self,
        request: &AuthenticationRequest,
        decision: Decision,
        number: Option<u32>,
        now: i64,
    ) -> String {
        self.answer_signed_by(&self.possession, &["swk"], request, decision, number, now)
    }

    fn answer_signed_by(
        &self,
        key: &SoftwareSigningKey,
        amr: &[&str],
        request: &AuthenticationRequest,
        decision: Decision,
        number: Option<u32>,
        now: i64,
    ) -> String {
        let response = AuthenticationResponse {
            v: PROTOCOL_VERSION,
            request_id: request.request_id.clone(),
            enrollment_id: request.enrollment_id.clone(),
            request_nonce: request.nonce.clone(),
            decision,
            parameters_digest: request.parameters_digest,
            selected_number: number.filter(|_| decision == Decision::Approve),
            amr: amr.iter().map(|m| (*m).to_string()).collect(),
            signals: DeviceSignals::default(),
            location: None,
            device: None,
            issued_at: now,
            app_attest_assertion: None,
        };
        envelope::sign(MessageType::AuthenticationResponse, &response, key).expect("signed")
    }
}

/// Runs `write` while a deletion of `user` is under way (begun, not yet committed), and returns
/// what it returned once both ended; the deletion must have removed the user.
///
/// PostgreSQL: `store::users::delete` removes the user's row first and `fido_ceremonies` last,
/// so a lock on that table taken before stops the deletion just before it commits, holding the
/// user's row; `write` starts once the row is locked. A write that looked the user up outside
/// its own write (a read before it) would see the user still there and store what it stores at
/// once, after the deletion removed the table's rows. SQLite: the deletion waits for the writer,
/// held here; `write`'s reads outside a write see the user, and its own write comes after the
/// deletion's.
pub(crate) async fn racing_a_deletion<T, F>(domain: &TestDomain, user: &UserId, write: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    /// Long enough for a spawned task to reach the statement it waits at.
    const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
    let db = domain.ctx.db.clone();
    let postgres = db.engine() == crate::store::Engine::Postgres;
    let mut hold = db.write().await.expect("a write");
    if postgres {
        sqlx::query("LOCK TABLE fido_ceremonies IN EXCLUSIVE MODE")
            .execute(&mut hold)
            .await
            .expect("locked");
    }
    let deletion = tokio::spawn({
        let (db, app, user) = (db.clone(), domain.app.id.clone(), user.clone());
        async move { crate::store::users::delete(&db, &app, &user).await }
    });
    if postgres {
        // Waits until the deletion holds the user's row (a lock a fixed write waits for), then
        // a little more for it to reach the table held here.
        let mut tries = 0;
        loop {
            let probe = sqlx::query(
                "SELECT 1 AS one FROM users WHERE application_id = $1 AND user_id = $2 \
                 FOR KEY SHARE NOWAIT",
            )
            .bind(domain.app.id.as_str())
            .bind(user.as_str())
            .fetch_optional(db.writer())
            .await;
            match probe {
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => break,
                Ok(Some(_)) if tries < 1000 => tries += 1,
                other => panic!(
                    "the deletion never locked the user: {:?}",
                    other.map(|row| row.is_some())
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let racing = tokio::spawn(write);
    tokio::time::sleep(SETTLE).await;
    // Were `users::delete` to stop touching the held table before it commits, it would not
    // wait here, and the write would not race it: that must fail, not pass untested.
    assert!(
        !deletion.is_finished(),
        "the deletion did not wait at the held table: hold another that it writes last"
    );
    hold.rollback().await.expect("released");
    let removed = deletion.await.expect("the deletion ran").expect("deleted");
    assert!(removed.is_some(), "the user was there to delete");
    racing.await.expect("the write ran")
}

/// Yields to the runtime `times` times: a pause shorter than any timer's.
pub(crate) async fn yields(times: u64) {
    for _ in 0..times {
        tokio::task::yield_now().await;
    }
}
