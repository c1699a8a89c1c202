//! Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and digests over it.
//!
//! Anything that is hashed or signed is first serialized canonically, so the device and the
//! server (and any other implementation checking the test vectors) produce the same bytes for
//! the same value. Nothing is ever hashed from ad-hoc string concatenation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod encoder;

/// A value could not be encoded canonically (for example a float that is not finite).
#[derive(Debug, thiserror::Error)]
#[error("value cannot be encoded as canonical JSON")]
pub struct CanonicalError;

/// Serializes `value` as RFC 8785 canonical JSON bytes.
///
/// Fails on a value JSON cannot hold (a NaN or infinite float, a map key that is not a string,
/// a number or a boolean) and on an object with the same member name twice.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    encoder::to_vec(value).map_err(|_| CanonicalError)
}

/// A SHA-256 digest, carried on the wire as unpadded base64url (43 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// SHA-256 of raw bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// SHA-256 of the canonical JSON encoding of `value`.
    pub fn of_canonical<T: Serialize>(value: &T) -> Result<Self, CanonicalError> {
        Ok(Self::of_bytes(&to_canonical_vec(value)?))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time comparison, for digests that act as proofs.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256Digest({})", String::from(*self))
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        URL_SAFE_NO_PAD.encode(d.0)
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| "digest is not base64url")?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| "digest is not 32 bytes")?;
        Ok(Self(arr))
    }
}

crate::openapi_schema!(Sha256Digest, string, "SHA-256 digest, unpadded base64url");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_removed() {
        let v = json!({"b": 1, "a": [true, null, "x"], "c": {"z": 1.5e3, "y": "é"}});
        let bytes = to_canonical_vec(&v).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":"é","z":1500}}"#
        );
    }

    #[test]
    fn digest_round_trips_through_string() {
        let d = Sha256Digest::of_bytes(b"abc");
        let s = String::from(d);
        assert_eq!(s, "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
        assert_eq!(Sha256Digest::try_from(s).unwrap(), d);
        assert!(Sha256Digest::try_from("short".to_string()).is_err());
        assert!(d.ct_eq(&d));
        assert!(!d.ct_eq(&Sha256Digest::of_bytes(b"abd")));
    }
}
