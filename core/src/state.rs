//! The device's state and its encryption at rest.
//!
//! All state is one JSON document, encrypted with ChaCha20-Poly1305 under a random 256-bit data
//! key. The data key is stored sealed by the platform key store (blob `state.key`); the document
//! is stored as `nonce || ciphertext` (blob `state.bin`), with a fresh nonce per write and the
//! format version as associated data. Each blob is written atomically, so a crash leaves the
//! previous state. State that does not decrypt or parse is an error, never silently reset.

use std::sync::Arc;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::ids::{DeviceId, EnrollmentId, UserId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::key_set::TrustedKeys;
use tessera_protocol::pairing::{ApplicationInfo, ServerUrl};
use tessera_protocol::time::UnixSeconds;
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::key_store::{KeyStore, KeyStoreError};
use crate::otp::{OtpAccount, OtpAccountId, OtpAccountSource, OtpKey};
use crate::secret::TransportSecret;
use crate::storage::SecureStorage;

const STATE_BLOB: &str = "state.bin";
const KEY_BLOB: &str = "state.key";
const STATE_KEY_ALIAS: &str = "tessera.state-key";
const AAD: &[u8] = b"tessera-device-state-v1";

/// Everything the device remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeviceState {
    /// The installation's id: [`DeviceId::of_device_key`] of the device key once there is one
    /// (a random placeholder before, as in state written before device keys existed).
    pub device_id: DeviceId,
    /// The key-store alias of the installation's device key; absent in state written before
    /// device keys existed (such a device gets one on its next pairing).
    #[serde(default)]
    pub device_key_alias: Option<String>,
    #[serde(default)]
    pub enrollments: Vec<StoredEnrollment>,
    #[serde(default)]
    pub servers: Vec<PinnedServer>,
    #[serde(default)]
    pub pending: Vec<PendingPairing>,
    /// Offline OTP accounts, with their seeds (which exist only inside this encrypted document).
    #[serde(default)]
    pub otp_accounts: Vec<StoredOtpAccount>,
}

impl DeviceState {
    pub fn new() -> Self {
        Self {
            device_id: DeviceId::generate(),
            device_key_alias: None,
            enrollments: Vec::new(),
            servers: Vec::new(),
            pending: Vec::new(),
            otp_accounts: Vec::new(),
        }
    }

    pub fn pinned_keys(&self, issuer: &ServerUrl) -> Option<&JwkSet> {
        self.servers
            .iter()
            .find(|s| &s.issuer == issuer)
            .map(|s| &s.keys)
    }

    pub fn pinned_server(&self, issuer: &ServerUrl) -> Option<&PinnedServer> {
        self.servers.iter().find(|s| &s.issuer == issuer)
    }

    /// Pins the keys a verified pairing reply lists. Where the server was pinned already, how far
    /// along its key set chain the device is and the keys it revoked are kept (a revoked key is
    /// never pinned again).
    pub fn pin(&mut self, issuer: &ServerUrl, keys: JwkSet, now: UnixSeconds) {
        let (sequence, revoked) = self
            .pinned_server(issuer)
            .map(|s| (s.sequence, s.revoked.clone()))
            .unwrap_or_default();
        let keys = JwkSet {
            keys: keys
                .keys
                .into_iter()
                .filter(|k| k.kid().is_none_or(|kid| !revoked.iter().any(|r| r == kid)))
                .collect(),
        };
        self.servers.retain(|s| &s.issuer != issuer);
        self.servers.push(PinnedServer {
            issuer: issuer.clone(),
            keys,
            pinned_at: now,
            sequence,
            revoked,
        });
    }

    /// Replaces a server's pins with what following its key set chain led to, if that is newer
    /// than what is pinned now; `true` if it was.
    pub fn advance_pins(
        &mut self,
        issuer: &ServerUrl,
        trusted: TrustedKeys,
        now: UnixSeconds,
    ) -> bool {
        let Some(server) = self.servers.iter_mut().find(|s| &s.issuer == issuer) else {
            return false;
        };
        if trusted.sequence <= server.sequence {
            return false;
        }
        server.keys = trusted.keys;
        server.sequence = trusted.sequence;
        server.revoked = trusted.revoked;
        server.pinned_at = now;
        true
    }

    /// Removes pending pairings created before `cutoff`, and those begun before device keys
    /// existed (their registration would be refused); returns their key aliases.
    pub fn take_expired_pending(&mut self, cutoff: UnixSeconds) -> Vec<String> {
        let mut aliases = Vec::new();
        self.pending.retain(|p| {
            if p.created_at < cutoff || p.device_id.is_none() {
                aliases.extend(p.key_aliases());
                false
            } else {
                true
            }
        });
        aliases
    }
}

/// A completed pairing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredEnrollment {
    pub enrollment_id: EnrollmentId,
    pub server: ServerUrl,
    pub application: ApplicationInfo,
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub paired_at: UnixSeconds,
    pub possession_alias: String,
    pub user_verification_alias: String,
    /// Waiting for the user's primary device to approve it.
    #[serde(default)]
    pub pending_verification: bool,
    /// When the server answered a call signed for it as for an enrollment it does not know
    /// (the backend or an administrator unpaired it). Kept, marked, for the app to show until
    /// it is removed; skipped when pulling requests.
    #[serde(default)]
    pub removed_at: Option<UnixSeconds>,
    /// The App Attest key id (standard base64, as the registration sent it) when the pairing was
    /// App Attested: later answers carry an assertion of that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_attest_key_id: Option<String>,
}

/// An offline OTP account. `Debug` never shows the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredOtpAccount {
    pub id: OtpAccountId,
    /// Labels, parameters and seed; for HOTP, `kind` holds the counter value the next code uses.
    pub key: OtpKey,
    #[serde(default)]
    pub source: OtpAccountSource,
    pub added_at: UnixSeconds,
}

impl From<&StoredOtpAccount> for OtpAccount {
    fn from(a: &StoredOtpAccount) -> Self {
        Self {
            id: a.id.clone(),
            issuer: a.key.issuer.clone(),
            account_name: a.key.account_name.clone(),
            kind: a.key.kind,
            digits: a.key.digits,
            algorithm: a.key.algorithm,
            short_secret: a.key.short_secret(),
            source: a.source.clone(),
        }
    }
}

/// A server's keys, pinned at pairing and moved along the server's key set chain since.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PinnedServer {
    pub issuer: ServerUrl,
    pub keys: JwkSet,
    pub pinned_at: UnixSeconds,
    /// The `sequence` of the key set the keys come from (0: pinned at pairing).
    #[serde(default)]
    pub sequence: u64,
    /// Key ids the server revoked: never trusted again.
    #[serde(default)]
    pub revoked: Vec<String>,
}

impl PinnedServer {
    /// What the device trusts, in the protocol's terms.
    pub fn trusted(&self) -> TrustedKeys {
        TrustedKeys {
            keys: self.keys.clone(),
            sequence: self.sequence,
            revoked: self.revoked.clone(),
        }
    }
}

/// How a pending pairing will complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub(crate) enum PendingMode {
    /// With a code sent by the device itself; keyed by the code's digest for retries.
    Direct { code_digest: Sha256Digest },
    /// Through the customer's backend; completed by the server payload.
    Relay,
}

/// Keys created and a registration signed, reply not yet received and checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingPairing {
    pub id: String,
    pub server: ServerUrl,
    pub mode: PendingMode,
    pub registration: String,
    pub user_verification_proof: String,
    pub registration_digest: Sha256Digest,
    pub possession_alias: String,
    pub user_verification_alias: String,
    pub created_at: UnixSeconds,
    /// The device id the registration names; absent for a pairing begun before device keys
    /// existed (never sent again: a new registration replaces it).
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    /// The OTP transport key's secret (see `tessera_protocol::otp`), base64url: zeroized on
    /// drop, `<redacted>` in `Debug`.
    #[serde(default)]
    pub otp_transport_secret: Option<TransportSecret>,
}

impl DeviceState {
    /// Drops OTP accounts provisioned for enrollments this device no longer holds.
    pub fn prune_enrollment_otp(&mut self) {
        let held: Vec<_> = self
            .enrollments
            .iter()
            .map(|e| e.enrollment_id.clone())
            .collect();
        self.otp_accounts.retain(|a| match &a.source {
            crate::otp::OtpAccountSource::Enrollment { enrollment_id } => {
                held.contains(enrollment_id)
            }
            _ => true,
        });
    }
}

impl PendingPairing {
    pub fn key_aliases(&self) -> [String; 2] {
        [
            self.possession_alias.clone(),
            self.user_verification_alias.clone(),
        ]
    }
}

/// Reads and writes [`DeviceState`] encrypted.
pub(crate) struct StateStore {
    storage: Arc<dyn SecureStorage>,
    data_key: Zeroizing<[u8; 32]>,
}

impl StateStore {
    /// Opens the store: unseals the data key (creating one on first use) and loads the state
    /// (a new state if there is none yet).
    pub fn open(
        storage: Arc<dyn SecureStorage>,
        key_store: &dyn KeyStore,
    ) -> Result<(Self, DeviceState), CoreError> {
        let sealed_key = storage.read(KEY_BLOB)?;
        let existing_state = storage.read(STATE_BLOB)?;
        let data_key = match sealed_key {
            Some(sealed) => {
                let opened = key_store
                    .open(STATE_KEY_ALIAS, &sealed)
                    .map_err(|e| match e {
                        KeyStoreError::OpenFailed | KeyStoreError::NotFound => {
                            CoreError::StateCorrupted
                        }
                        other => CoreError::from(other),
                    })?;
                let arr: [u8; 32] = opened
                    .as_slice()
                    .try_into()
                    .map_err(|_| CoreError::StateCorrupted)?;
                Zeroizing::new(arr)
            }
            None => {
                if existing_state.is_some() {
                    // State without its key can never be read again: say so.
                    return Err(CoreError::StateCorrupted);
                }
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(key.as_mut());
                let sealed = key_store.seal(STATE_KEY_ALIAS, key.as_slice())?;
                storage.write(KEY_BLOB, &sealed)?;
                key
            }
        };
        let store = Self { storage, data_key };
        let state = match existing_state {
            Some(bytes) => store.decrypt(&bytes)?,
            None => {
                let state = DeviceState::new();
                store.save(&state)?;
                state
            }
        };
        Ok((store, state))
    }

    /// Encrypts and writes the state atomically.
    pub fn save(&self, state: &DeviceState) -> Result<(), CoreError> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(state).map_err(|_| CoreError::Storage("encode failed".into()))?,
        );
        let blob = crate::aead::seal(&self.data_key, AAD, &plaintext)
            .map_err(|_| CoreError::Storage("encrypt failed".into()))?;
        self.storage.write(STATE_BLOB, &blob)?;
        Ok(())
    }

    fn decrypt(&self, blob: &[u8]) -> Result<DeviceState, CoreError> {
        let plaintext =
            crate::aead::open(&self.data_key, AAD, blob).map_err(|_| CoreError::StateCorrupted)?;
        serde_json::from_slice(&plaintext).map_err(|_| CoreError::StateCorrupted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_store::SoftwareKeyStore;
    use crate::storage::FileStorage;

    fn open(dir: &std::path::Path) -> Result<(StateStore, DeviceState), CoreError> {
        let ks = SoftwareKeyStore::open(dir.join("keys")).unwrap();
        let storage: Arc<dyn SecureStorage> =
            Arc::new(FileStorage::new(dir.join("state")).unwrap());
        StateStore::open(storage, &ks)
    }

    #[test]
    fn state_survives_a_restart_and_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut state) = open(dir.path()).unwrap();
        let id = state.device_id.clone();
        state.pin(
            &ServerUrl::parse("https://auth.example.com").unwrap(),
            JwkSet { keys: vec![] },
            1,
        );
        store.save(&state).unwrap();
        let (_, again) = open(dir.path()).unwrap();
        assert_eq!(again.device_id, id);
        assert_eq!(again.servers.len(), 1);
        let raw = std::fs::read(dir.path().join("state/state.bin")).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("auth.example.com"));
        assert!(!text.contains(id.as_str()));
    }

    #[test]
    fn tampered_or_keyless_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).unwrap();
        let path = dir.path().join("state/state.bin");
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert_eq!(open(dir.path()).err(), Some(CoreError::StateCorrupted));

        // The state key sealed by another key store.
        let dir2 = tempfile::tempdir().unwrap();
        open(dir2.path()).unwrap();
        std::fs::remove_dir_all(dir2.path().join("keys")).unwrap();
        assert_eq!(open(dir2.path()).err(), Some(CoreError::StateCorrupted));

        // State whose key blob is gone.
        let dir3 = tempfile::tempdir().unwrap();
        open(dir3.path()).unwrap();
        std::fs::remove_file(dir3.path().join("state/state.key")).unwrap();
        assert_eq!(open(dir3.path()).err(), Some(CoreError::StateCorrupted));
    }

    #[test]
    fn state_from_before_otp_accounts_still_loads() {
        let old = r#"{"device_id":"dev_0123456789abcdef0123456789abcdef","enrollments":[],"servers":[],"pending":[]}"#;
        let state: DeviceState = serde_json::from_str(old).unwrap();
        assert!(state.otp_accounts.is_empty());
        assert!(state.device_key_alias.is_none(), "no device key yet");
    }

    #[test]
    fn otp_seeds_are_stored_encrypted_and_debug_hides_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut state) = open(dir.path()).unwrap();
        let key = OtpKey::from_uri(
            "otpauth://hotp/Ex:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&counter=7",
        )
        .unwrap();
        state.otp_accounts.push(StoredOtpAccount {
            id: OtpAccountId::generate(),
            key,
            source: OtpAccountSource::Imported,
            added_at: 1,
        });
        store.save(&state).unwrap();
        assert!(!format!("{state:?}").contains("1234567890"));
        let (_, again) = open(dir.path()).unwrap();
        assert_eq!(again.otp_accounts.len(), 1);
        assert_eq!(again.otp_accounts[0].key, state.otp_accounts[0].key);
        let raw = std::fs::read(dir.path().join("state/state.bin")).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("alice") && !text.contains("counter"));
    }

    #[test]
    fn debug_of_pending_pairings_and_state_shows_no_transport_secret() {
        let secret = "U0VDUkVULVRSQU5TUE9SVC1TQ0FMQVItMTIzNDU2Nzg5MA";
        let pending = PendingPairing {
            id: "p".into(),
            server: ServerUrl::parse("https://a.example").unwrap(),
            mode: PendingMode::Relay,
            registration: String::new(),
            user_verification_proof: String::new(),
            registration_digest: Sha256Digest::of_bytes(b"p"),
            possession_alias: "p.p".into(),
            user_verification_alias: "p.u".into(),
            created_at: 1,
            device_id: None,
            otp_transport_secret: Some(TransportSecret::new(secret.into())),
        };
        let mut state = DeviceState::new();
        state.pending.push(pending.clone());
        for shown in [format!("{pending:?}"), format!("{state:?}")] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("<redacted>"));
        }
        // The stored form is unchanged: the plain base64url string.
        let json = serde_json::to_value(&pending).unwrap();
        assert_eq!(json["otp_transport_secret"], secret);
    }

    #[test]
    fn expired_pending_pairings_are_taken_with_their_aliases() {
        let mut state = DeviceState::new();
        for (id, created_at, device_id) in [
            ("old", 10, Some(DeviceId::generate())),
            ("new", 1000, Some(DeviceId::generate())),
            ("before-device-keys", 1000, None),
        ] {
            state.pending.push(PendingPairing {
                id: id.into(),
                server: ServerUrl::parse("https://a.example").unwrap(),
                mode: PendingMode::Relay,
                registration: String::new(),
                user_verification_proof: String::new(),
                registration_digest: Sha256Digest::of_bytes(id.as_bytes()),
                possession_alias: format!("{id}.p"),
                user_verification_alias: format!("{id}.u"),
                created_at,
                device_id,
                otp_transport_secret: None,
            });
        }
        assert_eq!(
            state.take_expired_pending(500),
            [
                "old.p",
                "old.u",
                "before-device-keys.p",
                "before-device-keys.u"
            ]
        );
        assert_eq!(state.pending.len(), 1);
        assert_eq!(state.pending[0].id, "new");
    }

    #[test]
    fn pins_only_move_forward_and_a_revoked_key_is_never_pinned_again() {
        use tessera_protocol::envelope::SoftwareSigningKey;
        let issuer = ServerUrl::parse("https://auth.example.com").unwrap();
        let [k1, k2, k3] = [(); 3].map(|_| SoftwareSigningKey::generate());
        let set = |keys: &[&SoftwareSigningKey]| JwkSet {
            keys: keys.iter().map(|k| k.public_jwk()).collect(),
        };
        // Pins from before key sets were numbered still load, at sequence 0.
        let old = format!(
            r#"{{"device_id":"dev_0123456789abcdef0123456789abcdef","servers":[{{"issuer":"{}","keys":{},"pinned_at":1}}]}}"#,
            issuer.as_str(),
            serde_json::to_string(&set(&[&k1])).unwrap()
        );
        let mut state: DeviceState = serde_json::from_str(&old).unwrap();
        assert_eq!(state.pinned_server(&issuer).unwrap().sequence, 0);

        let moved = TrustedKeys {
            keys: set(&[&k2]),
            sequence: 3,
            revoked: vec![k1.kid().to_string()],
        };
        assert!(state.advance_pins(&issuer, moved.clone(), 10));
        assert!(!state.advance_pins(&issuer, moved, 11), "not newer");
        let older = TrustedKeys {
            keys: set(&[&k1]),
            sequence: 2,
            revoked: Vec::new(),
        };
        assert!(!state.advance_pins(&issuer, older, 12), "never backwards");
        // A later pairing reply listing the revoked key does not bring it back, nor resets the
        // position in the chain.
        state.pin(&issuer, set(&[&k1, &k2, &k3]), 13);
        let pinned = state.pinned_server(&issuer).unwrap();
        assert_eq!(pinned.sequence, 3);
        assert!(pinned.keys.find(k1.kid()).is_none());
        assert!(pinned.keys.find(k3.kid()).is_some());
        assert_eq!(pinned.revoked, vec![k1.kid().to_string()]);
    }
}
