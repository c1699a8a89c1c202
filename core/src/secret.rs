//! Secrets the core holds in memory outside the key store.
//!
//! Every such secret is a type of its own that is zeroized when dropped and whose `Debug` prints
//! `<redacted>`, so a secret can be neither logged by accident (`{:?}` of a struct that holds one)
//! nor left behind in freed memory. The others: [`crate::OtpSeed`] (OTP seeds) and the state's
//! data key (`Zeroizing` inside the state store, which has no `Debug`).

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The secret half of a pairing's OTP transport key (its SEC1 scalar, unpadded base64url; see
/// `tessera_protocol::otp`). It is kept with the pending pairing, inside the encrypted device
/// state, until the server's reply opens the enrollment's OTP seed with it.
///
/// Serialized as the plain base64url string (the state document's format is unchanged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub(crate) struct TransportSecret(String);

impl TransportSecret {
    /// Wraps the base64url text of a transport key's scalar.
    pub(crate) fn new(base64url: String) -> Self {
        Self(base64url)
    }

    /// The base64url text, for opening the seed.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TransportSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransportSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_serde_keeps_the_plain_string() {
        let secret = TransportSecret::new("c2VjcmV0LXNjYWxhcg".into());
        assert_eq!(format!("{secret:?}"), "TransportSecret(<redacted>)");
        assert_eq!(
            serde_json::to_string(&secret).unwrap(),
            "\"c2VjcmV0LXNjYWxhcg\""
        );
        let back: TransportSecret = serde_json::from_str("\"c2VjcmV0LXNjYWxhcg\"").unwrap();
        assert_eq!(back, secret);
        assert_eq!(back.expose(), "c2VjcmV0LXNjYWxhcg");
    }

    #[test]
    fn zeroize_clears_the_text() {
        let mut secret = TransportSecret::new("c2VjcmV0".into());
        secret.zeroize();
        assert!(secret.expose().is_empty());
    }
}
