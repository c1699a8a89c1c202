//! The [`Authenticator`]: the device SDK's single entry object.

use std::sync::Arc;

use rand::RngCore;
use tessera_protocol::api::{
    DevicePairingRequest, DevicePairingResponse, EnrollmentStatus, ServerKeysResponse,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{DeviceId, EnrollmentId, UserId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{
    ApplicationInfo, MAX_REGISTRATION_AGE_SECONDS, MobilePayload, PairingCode, PairingReply,
    PairingUri, ServerKeySet, ServerUrl,
};
use tessera_protocol::time::{UnixSeconds, now};
use tokio::sync::Mutex;

use crate::config::AuthenticatorConfig;
use crate::error::CoreError;
use crate::key_store::KeyStore;
use crate::pairing::{ReplyTrust, create_registration, verify_pairing_reply};
use crate::signer::KeyStoreSigner;
use crate::state::{DeviceState, PendingMode, PendingPairing, StateStore, StoredEnrollment};
use crate::storage::SecureStorage;
use crate::transport::Transport;

/// How long a pending pairing is kept: a registration older than this is refused by the server
/// anyway.
const PENDING_TTL_SECONDS: i64 = MAX_REGISTRATION_AGE_SECONDS + 300;

/// One pairing of this device with one user of one application on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The enrollment's id (the server's name for this device of this user).
    pub enrollment_id: EnrollmentId,
    /// The server.
    pub server: ServerUrl,
    /// The application.
    pub application: ApplicationInfo,
    /// The user.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// When the pairing completed.
    pub paired_at: UnixSeconds,
}

impl From<&StoredEnrollment> for Enrollment {
    fn from(e: &StoredEnrollment) -> Self {
        Self {
            enrollment_id: e.enrollment_id.clone(),
            server: e.server.clone(),
            application: e.application.clone(),
            user_id: e.user_id.clone(),
            device_id: e.device_id.clone(),
            paired_at: e.paired_at,
        }
    }
}

/// The device SDK. Owns the device's encrypted state and exposes the flows.
///
/// Cheap to share (`Arc<Authenticator>`); every method may be called concurrently. State changes
/// are serialized and written before a method returns; no lock is held across a network call.
pub struct Authenticator {
    config: AuthenticatorConfig,
    key_store: Arc<dyn KeyStore>,
    store: StateStore,
    state: Mutex<DeviceState>,
    device_id: DeviceId,
    transport: Transport,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({})", self.device_id)
    }
}

enum Completion {
    Direct,
    Relay,
}

impl Authenticator {
    /// Opens the device: loads (or creates) the encrypted state and cleans stale pending
    /// pairings.
    pub async fn open(
        config: AuthenticatorConfig,
        key_store: Arc<dyn KeyStore>,
        storage: Arc<dyn SecureStorage>,
    ) -> Result<Self, CoreError> {
        let (store, mut state) = StateStore::open(storage, key_store.as_ref())?;
        let stale = state.take_expired_pending(now() - PENDING_TTL_SECONDS);
        if !stale.is_empty() {
            store.save(&state)?;
            delete_keys(key_store.as_ref(), &stale);
        }
        let transport = Transport::new(config.http_timeout, config.allow_insecure_http)?;
        let device_id = state.device_id.clone();
        Ok(Self {
            config,
            key_store,
            store,
            state: Mutex::new(state),
            device_id,
            transport,
        })
    }

    /// This installation's device id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id.clone()
    }

    /// The completed enrollments, oldest first.
    pub async fn enrollments(&self) -> Vec<Enrollment> {
        self.state
            .lock()
            .await
            .enrollments
            .iter()
            .map(Enrollment::from)
            .collect()
    }

    /// Pairs with a pairing URI (`tessera://pair?...`, from a QR code) or a typed pairing code
    /// plus the server's URL.
    ///
    /// Safe to retry: the keys and the signed registration are kept until the server answers, so
    /// a retry after a lost reply sends the identical registration and gets the same enrollment.
    pub async fn pair(
        &self,
        code_or_uri: &str,
        server: Option<&str>,
    ) -> Result<Enrollment, CoreError> {
        let (server, code) = parse_pairing_input(code_or_uri, server)?;
        self.transport.check_server(&server)?;
        let code_digest = code.digest();
        let mode = PendingMode::Direct { code_digest };
        let pending = {
            let mut state = self.state.lock().await;
            self.clean_pending(&mut state)?;
            match state
                .pending
                .iter()
                .find(|p| p.server == server && p.mode == mode)
            {
                Some(p) => p.clone(),
                None => self.new_pending(&mut state, &server, mode)?,
            }
        };
        let request = DevicePairingRequest {
            pairing_code: code.display_form().to_string(),
            registration: pending.registration.clone(),
            user_verification_proof: pending.user_verification_proof.clone(),
        };
        let response: Result<DevicePairingResponse, CoreError> = self
            .transport
            .post_json(&server, "/v1/device/pairings", &request)
            .await;
        match response {
            Ok(r) => {
                self.complete(&pending, &r.server_payload, Completion::Direct)
                    .await
            }
            Err(e @ CoreError::Server { .. }) => {
                // A definitive refusal: this registration will never be accepted.
                self.drop_pending(&pending.id).await?;
                Err(e)
            }
            // Network failure: keep the pending pairing for a retry.
            Err(e) => Err(e),
        }
    }

    /// Relay pairing, step 1: creates keys and a signed registration for `server` and returns the
    /// *mobile payload* for the app to hand to its backend, which forwards it to the server.
    pub async fn create_mobile_payload(&self, server: &str) -> Result<String, CoreError> {
        let server =
            ServerUrl::parse(server).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        self.transport.check_server(&server)?;
        let pending = {
            let mut state = self.state.lock().await;
            self.clean_pending(&mut state)?;
            self.new_pending(&mut state, &server, PendingMode::Relay)?
        };
        MobilePayload {
            v: tessera_protocol::PROTOCOL_VERSION,
            registration: pending.registration,
            user_verification_proof: pending.user_verification_proof,
        }
        .encode()
        .map_err(|_| CoreError::InvalidInput("mobile payload could not be encoded".into()))
    }

    /// Relay pairing, step 2: completes the pairing with the *server payload* the backend got
    /// from the server. Checks it against the server's own published keys (it travelled through
    /// a third party) or the keys already pinned for that server.
    pub async fn complete_relay_pairing(
        &self,
        server_payload: &str,
    ) -> Result<Enrollment, CoreError> {
        let untrusted: PairingReply = envelope::unverified_payload(server_payload)
            .map_err(|_| CoreError::InvalidInput("not a server payload".into()))?;
        let pending = {
            let state = self.state.lock().await;
            if let Some(done) = state
                .enrollments
                .iter()
                .find(|e| e.enrollment_id == untrusted.enrollment_id)
            {
                // Completed already (a retry); re-check it is genuinely that pairing's reply.
                let keys = state
                    .pinned_keys(&done.server)
                    .cloned()
                    .ok_or(CoreError::UntrustedServerKey)?;
                let reply = envelope::verify_with_set::<PairingReply>(
                    server_payload,
                    MessageType::PairingReply,
                    &keys,
                )
                .map_err(|_| CoreError::UntrustedServerKey)?;
                if reply.payload.device_id == self.device_id {
                    return Ok(Enrollment::from(done));
                }
                return Err(CoreError::ReplyMismatch("names another device"));
            }
            state
                .pending
                .iter()
                .find(|p| {
                    p.mode == PendingMode::Relay
                        && p.registration_digest.ct_eq(&untrusted.registration_digest)
                })
                .cloned()
                .ok_or(CoreError::UnknownPendingPairing)?
        };
        self.complete(&pending, server_payload, Completion::Relay)
            .await
    }

    /// Asks the server whether an enrollment is still active (a call signed with the
    /// enrollment's possession key).
    pub async fn enrollment_status(
        &self,
        id: &EnrollmentId,
    ) -> Result<EnrollmentStatus, CoreError> {
        let body = self.enrollment_call(id, reqwest::Method::GET).await?;
        serde_json::from_slice(&body)
            .map_err(|_| CoreError::InvalidServerResponse("unexpected enrollment status".into()))
    }

    /// Unpairs: tells the server (a signed call), then deletes the enrollment and its keys. If
    /// the server no longer knows the enrollment it is removed all the same; if the server cannot
    /// be reached nothing is removed (see [`Authenticator::forget_enrollment`]).
    pub async fn remove_enrollment(&self, id: &EnrollmentId) -> Result<(), CoreError> {
        let result = self.enrollment_call(id, reqwest::Method::DELETE).await;
        match result {
            Ok(_) => {}
            Err(CoreError::Server {
                code: ErrorCode::Unauthorized | ErrorCode::DeviceNotFound | ErrorCode::NotFound,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.forget_enrollment(id).await
    }

    /// Deletes an enrollment and its keys on this device only, without telling the server.
    pub async fn forget_enrollment(&self, id: &EnrollmentId) -> Result<(), CoreError> {
        let removed = {
            let mut state = self.state.lock().await;
            let before = state.enrollments.len();
            let mut aliases = Vec::new();
            state.enrollments.retain(|e| {
                if &e.enrollment_id == id {
                    aliases.push(e.possession_alias.clone());
                    aliases.push(e.user_verification_alias.clone());
                    false
                } else {
                    true
                }
            });
            if state.enrollments.len() == before {
                return Err(CoreError::EnrollmentNotFound);
            }
            self.store.save(&state)?;
            aliases
        };
        delete_keys(self.key_store.as_ref(), &removed);
        Ok(())
    }

    /// A call on `/v1/device/enrollments/{id}`, signed with that enrollment's possession key.
    async fn enrollment_call(
        &self,
        id: &EnrollmentId,
        method: reqwest::Method,
    ) -> Result<Vec<u8>, CoreError> {
        let enrollment = self.stored_enrollment(id).await?;
        let signer =
            KeyStoreSigner::new(Arc::clone(&self.key_store), &enrollment.possession_alias)?;
        self.transport
            .device_call(
                &enrollment.server,
                method,
                &format!("/v1/device/enrollments/{id}"),
                id,
                None,
                &signer,
            )
            .await
    }

    async fn stored_enrollment(&self, id: &EnrollmentId) -> Result<StoredEnrollment, CoreError> {
        self.state
            .lock()
            .await
            .enrollments
            .iter()
            .find(|e| &e.enrollment_id == id)
            .cloned()
            .ok_or(CoreError::EnrollmentNotFound)
    }

    /// Creates keys and a signed registration, records them as pending and saves. Called with
    /// the state lock held; on failure nothing is recorded and the keys are deleted.
    fn new_pending(
        &self,
        state: &mut DeviceState,
        server: &ServerUrl,
        mode: PendingMode,
    ) -> Result<PendingPairing, CoreError> {
        let mut id_bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let possession_alias = format!("tessera.{id}.possession");
        let user_verification_alias = format!("tessera.{id}.user-verification");
        let aliases = [possession_alias.clone(), user_verification_alias.clone()];
        let built = create_registration(
            &self.key_store,
            &self.config,
            &self.device_id,
            server,
            &possession_alias,
            &user_verification_alias,
        );
        let signed = match built {
            Ok(s) => s,
            Err(e) => {
                delete_keys(self.key_store.as_ref(), &aliases);
                return Err(e);
            }
        };
        let pending = PendingPairing {
            id,
            server: server.clone(),
            mode,
            registration: signed.registration,
            user_verification_proof: signed.user_verification_proof,
            registration_digest: signed.digest,
            possession_alias,
            user_verification_alias,
            created_at: now(),
        };
        state.pending.push(pending.clone());
        if let Err(e) = self.store.save(state) {
            state.pending.retain(|p| p.id != pending.id);
            delete_keys(self.key_store.as_ref(), &aliases);
            return Err(e);
        }
        Ok(pending)
    }

    fn clean_pending(&self, state: &mut DeviceState) -> Result<(), CoreError> {
        let stale = state.take_expired_pending(now() - PENDING_TTL_SECONDS);
        if !stale.is_empty() {
            self.store.save(state)?;
            delete_keys(self.key_store.as_ref(), &stale);
        }
        Ok(())
    }

    async fn drop_pending(&self, id: &str) -> Result<(), CoreError> {
        let aliases = {
            let mut state = self.state.lock().await;
            let Some(p) = state.pending.iter().find(|p| p.id == id).cloned() else {
                return Ok(());
            };
            state.pending.retain(|p| p.id != id);
            self.store.save(&state)?;
            p.key_aliases()
        };
        delete_keys(self.key_store.as_ref(), &aliases);
        Ok(())
    }

    /// Fetches and checks the key set a server publishes (for relay pairing).
    async fn published_keys(&self, server: &ServerUrl) -> Result<JwkSet, CoreError> {
        let published: ServerKeysResponse =
            self.transport.get_json(server, "/v1/server-keys").await?;
        let signed = envelope::verify_with_set::<ServerKeySet>(
            &published.signed_key_set,
            MessageType::ServerKeySet,
            &published.keys,
        )
        .map_err(|_| CoreError::UntrustedServerKey)?;
        if &published.issuer != server || &signed.payload.issuer != server {
            return Err(CoreError::ReplyMismatch("key set issued by another server"));
        }
        Ok(signed.payload.keys)
    }

    /// Checks the reply and turns the pending pairing into an enrollment.
    async fn complete(
        &self,
        pending: &PendingPairing,
        server_payload: &str,
        completion: Completion,
    ) -> Result<Enrollment, CoreError> {
        let pinned = self
            .state
            .lock()
            .await
            .pinned_keys(&pending.server)
            .cloned();
        let published = match (&pinned, &completion) {
            (None, Completion::Relay) => Some(self.published_keys(&pending.server).await?),
            _ => None,
        };
        let trust = match (&pinned, &published) {
            (Some(keys), _) => ReplyTrust::Pinned(keys),
            (None, Some(keys)) => ReplyTrust::Published(keys),
            (None, None) => ReplyTrust::FirstUseDirect,
        };
        let reply = verify_pairing_reply(
            server_payload,
            &pending.server,
            &pending.registration_digest,
            &self.device_id,
            trust,
        )?;

        let (enrollment, replaced) = {
            let mut state = self.state.lock().await;
            if let Some(done) = state
                .enrollments
                .iter()
                .find(|e| e.enrollment_id == reply.enrollment_id)
            {
                // A concurrent retry of the same pairing completed first.
                return Ok(Enrollment::from(done));
            }
            if !state.pending.iter().any(|p| p.id == pending.id) {
                return Err(CoreError::UnknownPendingPairing);
            }
            state.pending.retain(|p| p.id != pending.id);
            let mut replaced = Vec::new();
            state.enrollments.retain(|e| {
                let same = e.server == pending.server
                    && e.application.id == reply.application.id
                    && e.user_id == reply.user_id;
                if same {
                    replaced.push(e.possession_alias.clone());
                    replaced.push(e.user_verification_alias.clone());
                }
                !same
            });
            let stored = StoredEnrollment {
                enrollment_id: reply.enrollment_id.clone(),
                server: pending.server.clone(),
                application: reply.application.clone(),
                user_id: reply.user_id.clone(),
                device_id: self.device_id.clone(),
                paired_at: now(),
                possession_alias: pending.possession_alias.clone(),
                user_verification_alias: pending.user_verification_alias.clone(),
            };
            state.enrollments.push(stored.clone());
            state.pin(&pending.server, reply.server_keys.clone(), now());
            self.store.save(&state)?;
            (Enrollment::from(&stored), replaced)
        };
        delete_keys(self.key_store.as_ref(), &replaced);
        tracing::info!(
            enrollment_id = %enrollment.enrollment_id,
            server = %enrollment.server,
            "paired"
        );
        Ok(enrollment)
    }
}

fn parse_pairing_input(
    code_or_uri: &str,
    server: Option<&str>,
) -> Result<(ServerUrl, PairingCode), CoreError> {
    let given = server
        .map(ServerUrl::parse)
        .transpose()
        .map_err(|e| CoreError::InvalidInput(e.to_string()))?;
    let text = code_or_uri.trim();
    if text.contains("://") {
        let uri = PairingUri::parse(text).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        if given.as_ref().is_some_and(|g| g != &uri.server) {
            return Err(CoreError::ServerMismatch);
        }
        Ok((uri.server, uri.code))
    } else {
        let code = PairingCode::parse(text).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let server = given.ok_or_else(|| {
            CoreError::InvalidInput("a pairing code needs the server's URL".into())
        })?;
        Ok((server, code))
    }
}

/// Deletes keys, logging (without the alias' secrets — aliases are not secret) what fails.
fn delete_keys(key_store: &dyn KeyStore, aliases: &[String]) {
    for alias in aliases {
        if let Err(e) = key_store.delete_key(alias) {
            tracing::warn!(%alias, error = %e, "could not delete a key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairing_input_is_parsed_strictly() {
        let uri = "tessera://pair?server=https%3A%2F%2Fa.example&code=ABCD-EFGH-JKMN";
        let (server, code) = parse_pairing_input(uri, None).unwrap();
        assert_eq!(server.as_str(), "https://a.example");
        assert_eq!(code.normalized(), "ABCDEFGHJKMN");
        assert!(parse_pairing_input(uri, Some("https://a.example/")).is_ok());
        assert_eq!(
            parse_pairing_input(uri, Some("https://b.example")).unwrap_err(),
            CoreError::ServerMismatch
        );
        assert!(matches!(
            parse_pairing_input("ABCD-EFGH-JKMN", None).unwrap_err(),
            CoreError::InvalidInput(_)
        ));
        assert!(parse_pairing_input("abcd efgh jkmn", Some("https://a.example")).is_ok());
        let err = parse_pairing_input("tessera://pair?code=ABCD-EFGH-JKMN", None).unwrap_err();
        assert!(matches!(err, CoreError::InvalidInput(_)));
        // Errors never echo the code.
        let err = parse_pairing_input("QRST-VWXY-Z123Z", Some("https://a.example")).unwrap_err();
        assert!(!err.to_string().contains("QRST"));
    }
}
