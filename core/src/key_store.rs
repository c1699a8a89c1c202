//! The platform key store: P-256 signing keys referenced by alias, and sealing of small secrets.
//!
//! Private key material never crosses this interface: callers get public keys and signatures.
//! Platforms implement it with Android Keystore (StrongBox when present; the user-verification
//! key requires user authentication) or the iOS Secure Enclave. [`SoftwareKeyStore`] is the
//! default for tests, desktop and the examples.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::SigningKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::storage::{create_private_dir, write_atomically};

/// What a signing key is for; platforms protect the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// Used without user interaction (registration, device-signed calls, silent verification).
    Possession,
    /// Usable only after biometrics or the device PIN (approvals).
    UserVerification,
}

/// A key store operation failed. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStoreError {
    /// No key with this alias.
    #[error("no key with this alias")]
    NotFound,
    /// The user cancelled the biometric or PIN prompt.
    #[error("user verification was cancelled")]
    UserCancelled,
    /// Sealed data does not open with this key (tampered, or sealed by another key).
    #[error("sealed data does not open with this key")]
    OpenFailed,
    /// The key store failed.
    #[error("{0}")]
    Failed(String),
}

/// A platform key store. Object-safe and thread-safe; bindings expose it as a foreign trait.
pub trait KeyStore: Send + Sync {
    /// Creates a P-256 signing key under `alias`, replacing any key already there, and returns
    /// its public key as an uncompressed SEC1 point (65 bytes).
    fn generate_signing_key(
        &self,
        alias: &str,
        purpose: KeyPurpose,
    ) -> Result<Vec<u8>, KeyStoreError>;
    /// The public key under `alias` (uncompressed SEC1), or `None`.
    fn public_key(&self, alias: &str) -> Result<Option<Vec<u8>>, KeyStoreError>;
    /// Signs `data` (ECDSA P-256 with SHA-256 over `data`) and returns the ASN.1 DER signature,
    /// as Android Keystore and iOS `SecKeyCreateSignature` produce. A raw 64-byte `r || s`
    /// signature is accepted too.
    fn sign(&self, alias: &str, data: &[u8]) -> Result<Vec<u8>, KeyStoreError>;
    /// Deletes the key under `alias`; deleting a missing key is not an error.
    fn delete_key(&self, alias: &str) -> Result<(), KeyStoreError>;
    /// Encrypts `plaintext` with the sealing key under `alias`, creating that key on first use
    /// (Android: an AES-GCM Keystore key; iOS: Secure Enclave ECIES).
    fn seal(&self, alias: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError>;
    /// Decrypts what [`KeyStore::seal`] produced with the same alias.
    fn open(&self, alias: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError>;
    /// Creates a P-256 signing key under `alias` as [`KeyStore::generate_signing_key`] does, with
    /// the platform's key attestation over `challenge` (Android: `setAttestationChallenge`), and
    /// returns the attestation certificate chain, leaf first, each certificate DER.
    ///
    /// `Ok(None)` (the default): this store cannot attest keys and created nothing; the core
    /// then creates the key with [`KeyStore::generate_signing_key`] and sends no chain.
    fn generate_attested_signing_key(
        &self,
        alias: &str,
        purpose: KeyPurpose,
        challenge: &[u8],
    ) -> Result<Option<Vec<Vec<u8>>>, KeyStoreError> {
        let _ = (alias, purpose, challenge);
        Ok(None)
    }
    /// Attests the app with Apple App Attest over `client_data_hash` (a new App Attest key,
    /// `DCAppAttestService.attestKey`). `Ok(None)` (the default): the platform has no App Attest.
    fn attest_app(&self, client_data_hash: &[u8]) -> Result<Option<AppAttestation>, KeyStoreError> {
        let _ = client_data_hash;
        Ok(None)
    }
}

/// The app's App Attest assertions (iOS: `DCAppAttestService.generateAssertion(keyId,
/// clientDataHash:)`), for the answers of enrollments whose pairing was App Attested
/// ([`KeyStore::attest_app`]). Set with `Authenticator::set_app_attest_asserter`; without one
/// answers carry no assertion (as on Android).
pub trait AppAttestAsserter: Send + Sync {
    /// An assertion (Apple's CBOR, as returned) of the App Attest key `key_id` (the raw key id
    /// the attestation returned) over `client_data_hash` (32 bytes, the answer's
    /// `app_attest_client_data_hash`). Called off the main thread, before the answer is signed.
    fn generate_assertion(
        &self,
        key_id: &[u8],
        client_data_hash: &[u8],
    ) -> Result<Vec<u8>, KeyStoreError>;
}

/// An Apple App Attest attestation ([`KeyStore::attest_app`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAttestation {
    /// The App Attest key id (SHA-256 of the key's public point).
    pub key_id: Vec<u8>,
    /// The attestation object (CBOR) Apple returned.
    pub attestation_object: Vec<u8>,
}

#[derive(Default, Serialize, Deserialize)]
struct StoredKeys {
    /// alias → P-256 private scalar, base64url.
    signing: BTreeMap<String, String>,
    /// alias → 256-bit sealing key, base64url.
    sealing: BTreeMap<String, String>,
}

impl Drop for StoredKeys {
    fn drop(&mut self) {
        for v in self.signing.values_mut().chain(self.sealing.values_mut()) {
            v.zeroize();
        }
    }
}

/// A software signing key: the P-256 scalar (what is persisted) and the same key prepared for
/// `ring`, which makes the signatures (randomized ECDSA, as a hardware key store's are, and
/// several times faster than a pure-Rust signer; docs/benchmarks.md, "Device signatures").
struct SoftwareKey {
    key: SigningKey,
    pair: ring::signature::EcdsaKeyPair,
}

impl SoftwareKey {
    fn new(key: SigningKey, rng: &ring::rand::SystemRandom) -> Result<Self, KeyStoreError> {
        let scalar = Zeroizing::new(key.to_bytes().to_vec());
        let pair = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &scalar,
            &public_point(&key),
            rng,
        )
        .map_err(|_| KeyStoreError::Failed("not a usable P-256 key".into()))?;
        Ok(Self { key, pair })
    }
}

struct Keys {
    signing: BTreeMap<String, SoftwareKey>,
    sealing: BTreeMap<String, Zeroizing<[u8; 32]>>,
}

/// A key store in software: keys in memory, optionally persisted to one file (mode 0600, written
/// atomically). For tests, desktop and the examples: it is **not hardware-backed**, and anyone
/// who can read the file has the keys.
pub struct SoftwareKeyStore {
    keys: Mutex<Keys>,
    file: Option<PathBuf>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for SoftwareKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftwareKeyStore(persistent: {})", self.file.is_some())
    }
}

impl SoftwareKeyStore {
    /// A key store that lives only in memory.
    pub fn in_memory() -> Self {
        Self {
            keys: Mutex::new(Keys {
                signing: BTreeMap::new(),
                sealing: BTreeMap::new(),
            }),
            file: None,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// A key store persisted in `dir` (created if missing), loading the keys already there.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyStoreError> {
        let dir = dir.into();
        create_private_dir(&dir).map_err(|e| KeyStoreError::Failed(e.to_string()))?;
        let file = dir.join("software-keys.json");
        let rng = ring::rand::SystemRandom::new();
        let mut keys = Keys {
            signing: BTreeMap::new(),
            sealing: BTreeMap::new(),
        };
        match std::fs::read(&file) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let stored: StoredKeys = serde_json::from_slice(&bytes)
                    .map_err(|_| KeyStoreError::Failed("key file is corrupted".into()))?;
                for (alias, d) in &stored.signing {
                    let scalar = Zeroizing::new(decode(d)?);
                    let key = SigningKey::from_slice(&scalar)
                        .map_err(|_| KeyStoreError::Failed("key file is corrupted".into()))?;
                    keys.signing
                        .insert(alias.clone(), SoftwareKey::new(key, &rng)?);
                }
                for (alias, k) in &stored.sealing {
                    let raw = Zeroizing::new(decode(k)?);
                    let arr: [u8; 32] = raw
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyStoreError::Failed("key file is corrupted".into()))?;
                    keys.sealing.insert(alias.clone(), Zeroizing::new(arr));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KeyStoreError::Failed(format!("read failed: {}", e.kind()))),
        }
        Ok(Self {
            keys: Mutex::new(keys),
            file: Some(file),
            rng,
        })
    }

    fn with_keys<T>(
        &self,
        mutate: bool,
        f: impl FnOnce(&mut Keys) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let mut keys = self
            .keys
            .lock()
            .map_err(|_| KeyStoreError::Failed("key store lock poisoned".into()))?;
        let out = f(&mut keys)?;
        if mutate {
            self.persist(&keys)?;
        }
        Ok(out)
    }

    fn persist(&self, keys: &Keys) -> Result<(), KeyStoreError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let stored = StoredKeys {
            signing: keys
                .signing
                .iter()
                .map(|(a, k)| (a.clone(), URL_SAFE_NO_PAD.encode(k.key.to_bytes())))
                .collect(),
            sealing: keys
                .sealing
                .iter()
                .map(|(a, k)| (a.clone(), URL_SAFE_NO_PAD.encode(k.as_slice())))
                .collect(),
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec(&stored)
                .map_err(|_| KeyStoreError::Failed("encode failed".into()))?,
        );
        write_atomically(file, &bytes).map_err(|e| KeyStoreError::Failed(e.to_string()))
    }
}

fn decode(s: &str) -> Result<Vec<u8>, KeyStoreError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| KeyStoreError::Failed("key file is corrupted".into()))
}

fn public_point(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

impl KeyStore for SoftwareKeyStore {
    fn generate_signing_key(
        &self,
        alias: &str,
        _purpose: KeyPurpose,
    ) -> Result<Vec<u8>, KeyStoreError> {
        self.with_keys(true, |keys| {
            let key = SigningKey::random(&mut rand::rngs::OsRng);
            let public = public_point(&key);
            keys.signing
                .insert(alias.to_string(), SoftwareKey::new(key, &self.rng)?);
            Ok(public)
        })
    }

    fn public_key(&self, alias: &str) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.with_keys(false, |keys| {
            Ok(keys.signing.get(alias).map(|k| public_point(&k.key)))
        })
    }

    fn sign(&self, alias: &str, data: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.with_keys(false, |keys| {
            let key = keys.signing.get(alias).ok_or(KeyStoreError::NotFound)?;
            let signature = key
                .pair
                .sign(&self.rng, data)
                .map_err(|_| KeyStoreError::Failed("signing failed".into()))?;
            Ok(signature.as_ref().to_vec())
        })
    }

    fn delete_key(&self, alias: &str) -> Result<(), KeyStoreError> {
        let present = self.with_keys(false, |keys| Ok(keys.signing.contains_key(alias)))?;
        if present {
            self.with_keys(true, |keys| {
                keys.signing.remove(alias);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn seal(&self, alias: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let exists = self.with_keys(false, |keys| Ok(keys.sealing.contains_key(alias)))?;
        self.with_keys(!exists, |keys| {
            let key = keys.sealing.entry(alias.to_string()).or_insert_with(|| {
                let mut k = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(k.as_mut());
                k
            });
            crate::aead::seal(key, alias.as_bytes(), plaintext)
                .map_err(|_| KeyStoreError::Failed("seal failed".into()))
        })
    }

    fn open(&self, alias: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        self.with_keys(false, |keys| {
            let key = keys.sealing.get(alias).ok_or(KeyStoreError::NotFound)?;
            crate::aead::open(key, alias.as_bytes(), sealed).map_err(|_| KeyStoreError::OpenFailed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};

    #[test]
    fn signatures_are_randomized_as_a_hardware_key_store_s_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = SoftwareKeyStore::open(dir.path()).unwrap();
        let public = store
            .generate_signing_key("a", KeyPurpose::Possession)
            .unwrap();
        let first = store.sign("a", b"same input").unwrap();
        let second = store.sign("a", b"same input").unwrap();
        assert_ne!(first, second, "a fresh nonce for every signature");
        // Reopened from its file: the same key signs.
        let reopened = SoftwareKeyStore::open(dir.path()).unwrap();
        let third = reopened.sign("a", b"same input").unwrap();
        let vk = VerifyingKey::from_sec1_bytes(&public).unwrap();
        for der in [first, second, third] {
            vk.verify(b"same input", &Signature::from_der(&der).unwrap())
                .unwrap();
        }
        assert!(
            vk.verify(
                b"other input",
                &Signature::from_der(&store.sign("a", b"same input").unwrap()).unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn keys_sign_persist_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SoftwareKeyStore::open(dir.path()).unwrap();
        let public = store
            .generate_signing_key("a", KeyPurpose::Possession)
            .unwrap();
        assert_eq!(public.len(), 65);
        let der = store.sign("a", b"hello").unwrap();
        let vk = VerifyingKey::from_sec1_bytes(&public).unwrap();
        vk.verify(b"hello", &Signature::from_der(&der).unwrap())
            .unwrap();
        let sealed = store.seal("state", b"secret").unwrap();

        // Reopen: the same keys.
        let again = SoftwareKeyStore::open(dir.path()).unwrap();
        assert_eq!(again.public_key("a").unwrap().unwrap(), public);
        assert_eq!(again.open("state", &sealed).unwrap().as_slice(), b"secret");

        again.delete_key("a").unwrap();
        again.delete_key("a").unwrap();
        assert_eq!(again.sign("a", b"x"), Err(KeyStoreError::NotFound));
        assert_eq!(
            SoftwareKeyStore::open(dir.path())
                .unwrap()
                .public_key("a")
                .unwrap(),
            None
        );
    }

    #[test]
    fn sealed_data_is_bound_to_key_and_alias() {
        let store = SoftwareKeyStore::in_memory();
        let mut sealed = store.seal("x", b"secret").unwrap();
        store.seal("y", b"other").unwrap();
        assert_eq!(store.open("y", &sealed), Err(KeyStoreError::OpenFailed));
        sealed[20] ^= 1;
        assert_eq!(store.open("x", &sealed), Err(KeyStoreError::OpenFailed));
        assert_eq!(store.open("x", &[1, 2]), Err(KeyStoreError::OpenFailed));
        assert_eq!(store.open("missing", &sealed), Err(KeyStoreError::NotFound));
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = SoftwareKeyStore::open(dir.path().join("k")).unwrap();
        store
            .generate_signing_key("a", KeyPurpose::UserVerification)
            .unwrap();
        let meta = std::fs::metadata(dir.path().join("k/software-keys.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
