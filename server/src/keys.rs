//! The server's key ring: the keys it signs device-facing messages with and publishes, and the
//! signed key sets that announce them. Shared by every request of a server; replaced whole when
//! the stored keys change (a rotation, retirement or revocation, picked up by the periodic
//! reload), never re-signed per request.

use std::sync::{Arc, RwLock};

use tessera_protocol::envelope::{
    self, EnvelopeError, MessageType, RingSigningKey, SoftwareSigningKey,
};
use tessera_protocol::jwk::JwkSet;

/// What a ring holds at one moment.
pub(crate) struct KeyRingState {
    /// The published keys (they verify).
    pub keys: Vec<SoftwareSigningKey>,
    /// The published key that signs.
    pub signer: SoftwareSigningKey,
    /// The published signed key sets, oldest first; the last one is the current set.
    pub chain: Vec<String>,
    /// The current set's `sequence`.
    pub sequence: u64,
}

struct Loaded {
    public: JwkSet,
    signer: RingSigningKey,
    chain: Vec<String>,
    sequence: u64,
}

/// The keys in use; clones share one ring.
#[derive(Clone)]
pub(crate) struct KeyRing {
    current: Arc<RwLock<Arc<Loaded>>>,
}

impl KeyRing {
    /// A ring over a loaded state; `None` if it has no key set or its signer cannot sign.
    pub fn new(state: KeyRingState) -> Option<Self> {
        Some(Self {
            current: Arc::new(RwLock::new(Arc::new(Self::load(state)?))),
        })
    }

    fn load(state: KeyRingState) -> Option<Loaded> {
        if state.chain.is_empty() {
            return None;
        }
        Some(Loaded {
            public: JwkSet {
                keys: state
                    .keys
                    .iter()
                    .map(SoftwareSigningKey::public_jwk)
                    .collect(),
            },
            signer: RingSigningKey::from_software(&state.signer).ok()?,
            chain: state.chain,
            sequence: state.sequence,
        })
    }

    /// Replaces what the ring holds with `state` unless it is older (a lower sequence) or the
    /// same; `true` if it did.
    pub fn replace(&self, state: KeyRingState) -> bool {
        let held = self.snapshot();
        if state.sequence < held.sequence {
            return false;
        }
        let Some(loaded) = Self::load(state) else {
            return false;
        };
        if loaded.sequence == held.sequence
            && loaded.chain == held.chain
            && loaded.public == held.public
            && loaded.signer.kid() == held.signer.kid()
        {
            return false;
        }
        match self.current.write() {
            Ok(mut current) => {
                *current = Arc::new(loaded);
                true
            }
            Err(_) => false,
        }
    }

    fn snapshot(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            // A writer panicked mid-swap: the value is still a whole `Arc`.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The published public keys, each with its `kid`.
    pub fn public_set(&self) -> JwkSet {
        self.snapshot().public.clone()
    }

    /// Signs a message with the current signing key.
    pub fn sign<T: serde::Serialize>(
        &self,
        typ: MessageType,
        payload: &T,
    ) -> Result<String, EnvelopeError> {
        envelope::sign(typ, payload, &self.snapshot().signer)
    }

    /// The current signed key set (as published at `/v1/server-keys`).
    pub fn signed_key_set(&self) -> String {
        self.snapshot().chain.last().cloned().unwrap_or_default()
    }

    /// Every published signed key set, oldest first.
    pub fn chain(&self) -> Vec<String> {
        self.snapshot().chain.clone()
    }

    /// The current key set's `sequence`.
    pub fn sequence(&self) -> u64 {
        self.snapshot().sequence
    }
}
