//! The server's key ring: the keys it signs with and publishes.

use std::sync::Arc;

use tessera_protocol::envelope::{
    self, EnvelopeError, MessageType, RingSigningKey, SoftwareSigningKey,
};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{ServerKeySet, ServerUrl};

/// The keys loaded at start. The first signs; all are published.
#[derive(Clone)]
pub(crate) struct KeyRing {
    keys: Arc<Vec<SoftwareSigningKey>>,
    /// The first key, for signing with `ring`.
    signer: Arc<RingSigningKey>,
    /// The signed key set, signed once: the keys do not change while the server runs.
    signed_key_set: Arc<std::sync::OnceLock<String>>,
}

impl KeyRing {
    /// A ring over the stored keys (at least one).
    pub fn new(keys: Vec<SoftwareSigningKey>) -> Option<Self> {
        let signer = RingSigningKey::from_software(keys.first()?).ok()?;
        Some(Self {
            keys: Arc::new(keys),
            signer: Arc::new(signer),
            signed_key_set: Arc::new(std::sync::OnceLock::new()),
        })
    }

    /// The public keys, each with its `kid`.
    pub fn public_set(&self) -> JwkSet {
        JwkSet {
            keys: self
                .keys
                .iter()
                .map(SoftwareSigningKey::public_jwk)
                .collect(),
        }
    }

    /// Signs a message with the current key.
    pub fn sign<T: serde::Serialize>(
        &self,
        typ: MessageType,
        payload: &T,
    ) -> Result<String, EnvelopeError> {
        envelope::sign(typ, payload, self.signer.as_ref())
    }

    /// The signed key set, as published at `/v1/server-keys`: signed at its first request and
    /// served as is afterwards (the ring and the issuer are fixed for the server's life).
    pub fn signed_key_set(&self, issuer: &ServerUrl, now: i64) -> Result<String, EnvelopeError> {
        if let Some(signed) = self.signed_key_set.get() {
            return Ok(signed.clone());
        }
        let signed = self.sign_key_set(issuer, now)?;
        Ok(self.signed_key_set.get_or_init(|| signed).clone())
    }

    fn sign_key_set(&self, issuer: &ServerUrl, now: i64) -> Result<String, EnvelopeError> {
        self.sign(
            MessageType::ServerKeySet,
            &ServerKeySet {
                v: tessera_protocol::PROTOCOL_VERSION,
                issuer: issuer.clone(),
                keys: self.public_set(),
                issued_at: now,
            },
        )
    }
}
