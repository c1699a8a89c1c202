//! Signing envelopes with a key in the platform key store.

use std::sync::Arc;

use p256::ecdsa::Signature;
use tessera_protocol::envelope::{EnvelopeSigner, SignError};
use tessera_protocol::jwk::PublicJwk;

use crate::error::CoreError;
use crate::key_store::KeyStore;

/// An [`EnvelopeSigner`] over a key-store alias: the private key stays in the key store. Its
/// `kid` is the key's RFC 7638 thumbprint.
#[derive(Clone)]
pub struct KeyStoreSigner {
    key_store: Arc<dyn KeyStore>,
    alias: String,
    public: PublicJwk,
    /// The public key as an uncompressed SEC1 point, for checking each signature with `ring`.
    point: Vec<u8>,
}

impl std::fmt::Debug for KeyStoreSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStoreSigner({})", self.alias)
    }
}

impl KeyStoreSigner {
    /// A signer for the key under `alias`, which must exist.
    pub fn new(key_store: Arc<dyn KeyStore>, alias: &str) -> Result<Self, CoreError> {
        let point = key_store.public_key(alias)?.ok_or(CoreError::KeyStore(
            "a key of this enrollment is missing".into(),
        ))?;
        let public = PublicJwk::from_sec1_bytes(&point)
            .map_err(|_| {
                CoreError::KeyStore("the key store returned an invalid public key".into())
            })?
            .with_thumbprint_kid();
        // Uncompressed whatever form the key store returned, as `ring` reads it.
        let point = public
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Ok(Self {
            key_store,
            alias: alias.to_string(),
            public,
            point,
        })
    }

    /// The public key, with its thumbprint as `kid`.
    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }
}

/// Reads a signature as the key store returned it (DER, or raw `r || s`), normalized to low-S.
pub(crate) fn parse_signature(bytes: &[u8]) -> Result<Signature, SignError> {
    let signature = if bytes.len() == 64 {
        Signature::from_slice(bytes)
    } else {
        Signature::from_der(bytes)
    }
    .map_err(|_| SignError("the key store returned a malformed signature".into()))?;
    Ok(signature.normalize_s().unwrap_or(signature))
}

impl EnvelopeSigner for KeyStoreSigner {
    fn key_id(&self) -> String {
        self.public.thumbprint()
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Signature, SignError> {
        let bytes = self
            .key_store
            .sign(&self.alias, signing_input)
            .map_err(|e| SignError(e.to_string()))?;
        let signature = parse_signature(&bytes)?;
        // A key store that signs with another key than it reported is caught here, not by the
        // server.
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.point.as_slice(),
        )
        .verify(signing_input, &signature.to_bytes())
        .map_err(|_| SignError("the key store's signature does not verify".into()))?;
        Ok(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_store::{KeyPurpose, SoftwareKeyStore};
    use tessera_protocol::envelope::{self, MessageType};

    #[test]
    fn der_and_raw_signatures_are_accepted_and_garbage_is_not() {
        let store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::in_memory());
        store
            .generate_signing_key("k", KeyPurpose::Possession)
            .unwrap();
        let der = store.sign("k", b"m").unwrap();
        let parsed = parse_signature(&der).unwrap();
        assert_eq!(parse_signature(&parsed.to_bytes()).unwrap(), parsed);
        assert!(parse_signature(&[0u8; 10]).is_err());
        assert!(
            parse_signature(&[0u8; 64]).is_err(),
            "r = s = 0 is not a signature"
        );
    }

    #[test]
    fn envelopes_signed_through_the_key_store_verify() {
        let store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::in_memory());
        store
            .generate_signing_key("k", KeyPurpose::Possession)
            .unwrap();
        let signer = KeyStoreSigner::new(Arc::clone(&store), "k").unwrap();
        let jws = envelope::sign(
            MessageType::DeviceRequest,
            &serde_json::json!({"a": 1}),
            &signer,
        )
        .unwrap();
        let v = envelope::verify::<serde_json::Value>(
            &jws,
            MessageType::DeviceRequest,
            signer.public_jwk(),
        )
        .unwrap();
        assert_eq!(v.kid, signer.public_jwk().thumbprint());
        assert!(KeyStoreSigner::new(store, "missing").is_err());
    }

    /// A key store that reports one key and signs with another (a broken platform key store,
    /// or one whose key was replaced under the alias).
    #[derive(Debug)]
    struct SwappedKeys(SoftwareKeyStore);

    impl KeyStore for SwappedKeys {
        fn generate_signing_key(
            &self,
            alias: &str,
            purpose: KeyPurpose,
        ) -> Result<Vec<u8>, crate::key_store::KeyStoreError> {
            self.0.generate_signing_key(alias, purpose)
        }
        fn public_key(
            &self,
            alias: &str,
        ) -> Result<Option<Vec<u8>>, crate::key_store::KeyStoreError> {
            self.0.public_key(alias)
        }
        fn sign(
            &self,
            _alias: &str,
            data: &[u8],
        ) -> Result<Vec<u8>, crate::key_store::KeyStoreError> {
            self.0.sign("other", data)
        }
        fn delete_key(&self, alias: &str) -> Result<(), crate::key_store::KeyStoreError> {
            self.0.delete_key(alias)
        }
        fn seal(
            &self,
            alias: &str,
            plaintext: &[u8],
        ) -> Result<Vec<u8>, crate::key_store::KeyStoreError> {
            self.0.seal(alias, plaintext)
        }
        fn open(
            &self,
            alias: &str,
            sealed: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::key_store::KeyStoreError> {
            self.0.open(alias, sealed)
        }
    }

    #[test]
    fn a_signature_by_another_key_than_reported_is_refused() {
        let inner = SoftwareKeyStore::in_memory();
        inner
            .generate_signing_key("k", KeyPurpose::Possession)
            .unwrap();
        inner
            .generate_signing_key("other", KeyPurpose::Possession)
            .unwrap();
        let store: Arc<dyn KeyStore> = Arc::new(SwappedKeys(inner));
        let signer = KeyStoreSigner::new(store, "k").unwrap();
        let refused = envelope::sign(
            MessageType::DeviceRequest,
            &serde_json::json!({"a": 1}),
            &signer,
        );
        assert!(refused.is_err(), "{refused:?}");
    }
}
