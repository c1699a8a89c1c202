//! What the platform implements: the key store, secure storage and the user-verification prompt,
//! as foreign traits (Kotlin interfaces, Swift protocols, Python classes), plus software
//! implementations of the first two for tests and desktop use.

use std::sync::Arc;

use tessera_core::{KeyPurpose, KeyStore, KeyStoreError, SecureStorage, StorageError};
use zeroize::Zeroizing;

use crate::error::{PlatformError, TesseraError};

/// What a signing key is for; platforms protect the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum KeyKind {
    /// Used without user interaction: registration, device-signed calls, silent verification,
    /// swipe approvals. Android: a Keystore key without user authentication (StrongBox when
    /// present). iOS: a Secure Enclave key usable after first unlock.
    Possession,
    /// Usable only after biometrics or the device PIN: approvals that verify the user. Android:
    /// `setUserAuthenticationRequired(true)`. iOS: a Secure Enclave key whose access control
    /// requires `.userPresence`.
    UserVerification,
}

impl From<KeyPurpose> for KeyKind {
    fn from(p: KeyPurpose) -> Self {
        match p {
            KeyPurpose::Possession => KeyKind::Possession,
            KeyPurpose::UserVerification => KeyKind::UserVerification,
        }
    }
}

/// The platform key store: P-256 signing keys referenced by alias, and sealing of the state key.
/// Private key material never crosses this interface.
#[uniffi::export(with_foreign)]
pub trait PlatformKeyStore: Send + Sync {
    /// Creates a P-256 signing key under `alias` (replacing any key there) protected as `kind`
    /// says, and returns its public key as an uncompressed SEC1 point (65 bytes).
    fn generate_signing_key(&self, alias: String, kind: KeyKind) -> Result<Vec<u8>, PlatformError>;
    /// The public key under `alias` (uncompressed SEC1), or none.
    fn public_key(&self, alias: String) -> Result<Option<Vec<u8>>, PlatformError>;
    /// ECDSA P-256 with SHA-256 over `data`; returns the ASN.1 DER signature (what Android
    /// Keystore and `SecKeyCreateSignature` produce; a raw 64-byte `r || s` is accepted too).
    /// For a user-verification key this is called right after [`UserVerifier::verify_user`]
    /// succeeded, inside the platform's authentication window.
    fn sign(&self, alias: String, data: Vec<u8>) -> Result<Vec<u8>, PlatformError>;
    /// Deletes the key under `alias`; deleting a missing key is not an error.
    fn delete_key(&self, alias: String) -> Result<(), PlatformError>;
    /// Encrypts `plaintext` with the sealing key under `alias`, creating it on first use
    /// (Android: an AES-GCM Keystore key; iOS: Secure Enclave ECIES).
    fn seal(&self, alias: String, plaintext: Vec<u8>) -> Result<Vec<u8>, PlatformError>;
    /// Decrypts what [`PlatformKeyStore::seal`] produced under the same alias;
    /// [`PlatformError::OpenFailed`] if it does not open.
    fn open(&self, alias: String, sealed: Vec<u8>) -> Result<Vec<u8>, PlatformError>;
    /// Creates a P-256 signing key as [`PlatformKeyStore::generate_signing_key`] does, with key
    /// attestation over `challenge` (Android: `setAttestationChallenge(challenge)`), and returns
    /// its attestation certificate chain, leaf first, each certificate DER. Return an empty list
    /// (creating no key) where the platform cannot attest keys: the SDK then calls
    /// `generate_signing_key` and pairs without attestation.
    fn generate_attested_signing_key(
        &self,
        alias: String,
        kind: KeyKind,
        challenge: Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, PlatformError>;
    /// Attests the app with Apple App Attest over `client_data_hash`
    /// (`DCAppAttestService.generateKey` then `attestKey(_:clientDataHash:)`). Return none where
    /// App Attest is unavailable (Android, simulators, old iOS).
    fn attest_app(
        &self,
        client_data_hash: Vec<u8>,
    ) -> Result<Option<AppAttestationResult>, PlatformError>;
}

/// The app's Apple App Attest assertions (iOS: `DCAppAttestService.generateAssertion(keyId,
/// clientDataHash:)`). Set with `Authenticator.set_app_attest_asserter`: answers of enrollments
/// whose pairing was App Attested (`PlatformKeyStore::attest_app`) then carry an assertion, which
/// an application with attestation `require` (or a policy asking for it) demands.
#[uniffi::export(with_foreign)]
pub trait AppAttestAsserter: Send + Sync {
    /// An assertion of the App Attest key `key_id` (the raw bytes of the base64 key id
    /// `generateKey` returned, as `attest_app` gave it) over `client_data_hash` (32 bytes):
    /// Apple's CBOR, as `generateAssertion` returns it. Called off the main thread, before the
    /// answer is signed; throw to send no answer.
    fn generate_assertion(
        &self,
        key_id: Vec<u8>,
        client_data_hash: Vec<u8>,
    ) -> Result<Vec<u8>, PlatformError>;
}

/// Adapts the foreign asserter to the device core.
pub(crate) struct ForeignAppAttestAsserter(pub(crate) Arc<dyn AppAttestAsserter>);

impl tessera_core::AppAttestAsserter for ForeignAppAttestAsserter {
    fn generate_assertion(
        &self,
        key_id: &[u8],
        client_data_hash: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self
            .0
            .generate_assertion(key_id.to_vec(), client_data_hash.to_vec())?)
    }
}

/// An Apple App Attest attestation ([`PlatformKeyStore::attest_app`]).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AppAttestationResult {
    /// The App Attest key id (the raw bytes of the base64 key id `generateKey` returned).
    pub key_id: Vec<u8>,
    /// The attestation object `attestKey` returned.
    pub attestation_object: Vec<u8>,
}

/// A few named blobs, each read and written whole; `write` must be atomic. The SDK encrypts
/// everything it stores, so this only has to be durable (Android: the app's no-backup files
/// directory; iOS: the keychain with a `ThisDeviceOnly` accessibility).
#[uniffi::export(with_foreign)]
pub trait PlatformStorage: Send + Sync {
    /// The blob called `name`, or none.
    fn read(&self, name: String) -> Result<Option<Vec<u8>>, PlatformError>;
    /// Replaces the blob called `name`, atomically.
    fn write(&self, name: String, bytes: Vec<u8>) -> Result<(), PlatformError>;
    /// Deletes the blob called `name`; deleting a missing blob is not an error.
    fn delete(&self, name: String) -> Result<(), PlatformError>;
}

/// What the user is asked to confirm with biometrics or the device PIN; the app writes its own
/// prompt text from it (in the user's language).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct VerificationReason {
    /// The application asking (e.g. `Example Bank`).
    pub application_name: String,
    /// The request's headline (e.g. `Pay 120.00 EUR to ACME GmbH?`); for a QR login, the
    /// application's sign-in text.
    pub message: String,
    /// The user the answer is for.
    pub user_id: String,
    /// Whether the server demands it (otherwise the app's own policy asked for it).
    pub required_by_server: bool,
    /// The key-store alias of the user-verification key the answer is signed with right after
    /// the prompt. A platform that authorizes each signature with its own prompt (Android:
    /// `BiometricPrompt.CryptoObject` over a `Signature` with this key) prepares it first.
    pub key_alias: String,
}

/// The user-verification prompt: Android `BiometricPrompt`, iOS `LAContext`. Called by the SDK
/// just before an approval is signed with the user-verification key; returns the RFC 8176
/// methods used (`fpt`, `face`, `iris`, `pin`, …), which are signed into the answer. Throw
/// [`PlatformError::UserCancelled`] when the user cancels: nothing is sent.
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait UserVerifier: Send + Sync {
    /// Shows the prompt; returns how the user was verified.
    async fn verify_user(&self, reason: VerificationReason) -> Result<Vec<String>, PlatformError>;
}

/// Adapts the foreign key store to the device core.
pub(crate) struct ForeignKeyStore(pub(crate) Arc<dyn PlatformKeyStore>);

impl KeyStore for ForeignKeyStore {
    fn generate_signing_key(
        &self,
        alias: &str,
        purpose: KeyPurpose,
    ) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self
            .0
            .generate_signing_key(alias.to_string(), purpose.into())?)
    }

    fn public_key(&self, alias: &str) -> Result<Option<Vec<u8>>, KeyStoreError> {
        Ok(self.0.public_key(alias.to_string())?)
    }

    fn sign(&self, alias: &str, data: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.0.sign(alias.to_string(), data.to_vec())?)
    }

    fn delete_key(&self, alias: &str) -> Result<(), KeyStoreError> {
        Ok(self.0.delete_key(alias.to_string())?)
    }

    fn seal(&self, alias: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.0.seal(alias.to_string(), plaintext.to_vec())?)
    }

    fn open(&self, alias: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        Ok(Zeroizing::new(
            self.0.open(alias.to_string(), sealed.to_vec())?,
        ))
    }

    fn generate_attested_signing_key(
        &self,
        alias: &str,
        purpose: KeyPurpose,
        challenge: &[u8],
    ) -> Result<Option<Vec<Vec<u8>>>, KeyStoreError> {
        let chain = self.0.generate_attested_signing_key(
            alias.to_string(),
            purpose.into(),
            challenge.to_vec(),
        )?;
        Ok((!chain.is_empty()).then_some(chain))
    }

    fn attest_app(
        &self,
        client_data_hash: &[u8],
    ) -> Result<Option<tessera_core::AppAttestation>, KeyStoreError> {
        Ok(self
            .0
            .attest_app(client_data_hash.to_vec())?
            .map(|a| tessera_core::AppAttestation {
                key_id: a.key_id,
                attestation_object: a.attestation_object,
            }))
    }
}

/// Adapts the foreign storage to the device core.
pub(crate) struct ForeignStorage(pub(crate) Arc<dyn PlatformStorage>);

impl SecureStorage for ForeignStorage {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.0.read(name.to_string())?)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        Ok(self.0.write(name.to_string(), bytes.to_vec())?)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        Ok(self.0.delete(name.to_string())?)
    }
}

/// The core's software key store behind the foreign interface (see [`software_key_store`]).
struct SoftwareKeys(tessera_core::SoftwareKeyStore);

impl PlatformKeyStore for SoftwareKeys {
    fn generate_signing_key(&self, alias: String, kind: KeyKind) -> Result<Vec<u8>, PlatformError> {
        let purpose = match kind {
            KeyKind::Possession => KeyPurpose::Possession,
            KeyKind::UserVerification => KeyPurpose::UserVerification,
        };
        Ok(self.0.generate_signing_key(&alias, purpose)?)
    }

    fn public_key(&self, alias: String) -> Result<Option<Vec<u8>>, PlatformError> {
        Ok(self.0.public_key(&alias)?)
    }

    fn sign(&self, alias: String, data: Vec<u8>) -> Result<Vec<u8>, PlatformError> {
        Ok(self.0.sign(&alias, &data)?)
    }

    fn delete_key(&self, alias: String) -> Result<(), PlatformError> {
        Ok(self.0.delete_key(&alias)?)
    }

    fn seal(&self, alias: String, plaintext: Vec<u8>) -> Result<Vec<u8>, PlatformError> {
        let plaintext = Zeroizing::new(plaintext);
        Ok(self.0.seal(&alias, &plaintext)?)
    }

    fn open(&self, alias: String, sealed: Vec<u8>) -> Result<Vec<u8>, PlatformError> {
        // The foreign side receives a plain byte array; the copy here is wiped.
        Ok(self.0.open(&alias, &sealed)?.to_vec())
    }

    fn generate_attested_signing_key(
        &self,
        _alias: String,
        _kind: KeyKind,
        _challenge: Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, PlatformError> {
        // Software keys cannot be attested.
        Ok(Vec::new())
    }

    fn attest_app(
        &self,
        _client_data_hash: Vec<u8>,
    ) -> Result<Option<AppAttestationResult>, PlatformError> {
        Ok(None)
    }
}

/// The core's file storage behind the foreign interface (see [`file_storage`]).
struct Files(tessera_core::FileStorage);

impl PlatformStorage for Files {
    fn read(&self, name: String) -> Result<Option<Vec<u8>>, PlatformError> {
        Ok(self.0.read(&name)?)
    }

    fn write(&self, name: String, bytes: Vec<u8>) -> Result<(), PlatformError> {
        Ok(self.0.write(&name, &bytes)?)
    }

    fn delete(&self, name: String) -> Result<(), PlatformError> {
        Ok(self.0.delete(&name)?)
    }
}

/// A key store in software, for tests and desktop apps: keys in memory, or, with `directory`,
/// persisted to one file there (mode 0600). **Not hardware-backed**: whoever reads the file has
/// the keys. Mobile apps use the Android Keystore or Secure Enclave key store of the `android/`
/// and `ios/` packages.
#[uniffi::export]
pub fn software_key_store(
    directory: Option<String>,
) -> Result<Arc<dyn PlatformKeyStore>, TesseraError> {
    let store = match directory {
        None => tessera_core::SoftwareKeyStore::in_memory(),
        Some(dir) => tessera_core::SoftwareKeyStore::open(dir)
            .map_err(|e| TesseraError::from(tessera_core::CoreError::from(e)))?,
    };
    Ok(Arc::new(SoftwareKeys(store)))
}

/// Storage in a directory (created, mode 0700, if missing): one file per blob, written
/// atomically. For tests and desktop apps.
#[uniffi::export]
pub fn file_storage(directory: String) -> Result<Arc<dyn PlatformStorage>, TesseraError> {
    let storage = tessera_core::FileStorage::new(directory)
        .map_err(|e| TesseraError::from(tessera_core::CoreError::from(e)))?;
    Ok(Arc::new(Files(storage)))
}
