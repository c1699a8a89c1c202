//! P-256 public keys as JSON Web Keys (RFC 7517), validated when parsed, with RFC 7638
//! thumbprints used as key ids.
//!
//! A [`PublicJwk`] can only exist if it names a valid point on the P-256 curve: a key that is
//! malformed, of another curve, or off the curve is refused at deserialization, so no code
//! further in ever handles an invalid key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::EncodedPoint;
use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::canonical::Sha256Digest;

/// Why a JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// `kty` is not `EC` or `crv` is not `P-256`.
    #[error("only EC keys on curve P-256 are accepted")]
    UnsupportedKeyType,
    /// `alg` is present and is not `ES256`.
    #[error("only the ES256 algorithm is accepted")]
    UnsupportedAlgorithm,
    /// `x` or `y` is not 32 bytes of unpadded base64url.
    #[error("key coordinates are not 32-byte base64url values")]
    MalformedCoordinates,
    /// The coordinates do not name a point on the P-256 curve.
    #[error("key is not a valid P-256 point")]
    NotOnCurve,
}

#[derive(Serialize, Deserialize)]
struct RawJwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
}

/// A validated P-256 public key in JWK form.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawJwk", into = "RawJwk")]
pub struct PublicJwk {
    x: String,
    y: String,
    kid: Option<String>,
    key: VerifyingKey,
}

crate::openapi_schema!(
    PublicJwk,
    object,
    "P-256 public key as a JWK (RFC 7517): kty EC, crv P-256, x, y, optional kid"
);

impl std::fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicJwk(P-256, thumbprint {})", self.thumbprint())
    }
}

impl TryFrom<RawJwk> for PublicJwk {
    type Error = JwkError;
    fn try_from(raw: RawJwk) -> Result<Self, JwkError> {
        if raw.kty != "EC" || raw.crv != "P-256" {
            return Err(JwkError::UnsupportedKeyType);
        }
        if raw.alg.as_deref().is_some_and(|a| a != "ES256") {
            return Err(JwkError::UnsupportedAlgorithm);
        }
        let x = decode_coordinate(&raw.x)?;
        let y = decode_coordinate(&raw.y)?;
        let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        let key = VerifyingKey::from_encoded_point(&point).map_err(|_| JwkError::NotOnCurve)?;
        Ok(Self {
            x: raw.x,
            y: raw.y,
            kid: raw.kid,
            key,
        })
    }
}

impl From<PublicJwk> for RawJwk {
    fn from(k: PublicJwk) -> RawJwk {
        RawJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: k.x,
            y: k.y,
            kid: k.kid,
            alg: Some("ES256".into()),
            use_: Some("sig".into()),
        }
    }
}

fn decode_coordinate(s: &str) -> Result<[u8; 32], JwkError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| JwkError::MalformedCoordinates)?;
    bytes.try_into().map_err(|_| JwkError::MalformedCoordinates)
}

impl PublicJwk {
    /// The JWK of a P-256 verifying key, with no `kid`.
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        // An uncompressed point of a valid key always has both coordinates.
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
            _ => (String::new(), String::new()),
        };
        Self {
            x,
            y,
            kid: None,
            key: *key,
        }
    }

    /// Parses an uncompressed (65 bytes) or compressed (33 bytes) SEC1 point, the form platform
    /// key stores export public keys in.
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, JwkError> {
        let key = VerifyingKey::from_sec1_bytes(bytes).map_err(|_| JwkError::NotOnCurve)?;
        Ok(Self::from_verifying_key(&key))
    }

    /// The same key with `kid` set to its RFC 7638 thumbprint.
    pub fn with_thumbprint_kid(mut self) -> Self {
        self.kid = Some(self.thumbprint());
        self
    }

    /// The same key with the given `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The `kid` member, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The `x` coordinate, unpadded base64url.
    pub fn x(&self) -> &str {
        &self.x
    }

    /// The `y` coordinate, unpadded base64url.
    pub fn y(&self) -> &str {
        &self.y
    }

    /// The key for ECDSA verification.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The RFC 7638 JWK thumbprint (SHA-256 over the canonical required members), base64url.
    pub fn thumbprint(&self) -> String {
        let members = serde_json::json!({"crv": "P-256", "kty": "EC", "x": self.x, "y": self.y});
        // The members are four short strings: canonical encoding cannot fail.
        Sha256Digest::of_canonical(&members)
            .map(String::from)
            .unwrap_or_default()
    }

    /// The RFC 7638 thumbprint as its 32 digest bytes (what [`PublicJwk::thumbprint`] encodes).
    pub fn thumbprint_digest(&self) -> Sha256Digest {
        // RFC 7638's input for an EC key: the required members in lexicographic order, no
        // whitespace. `x` and `y` are base64url, which JSON never escapes, so this text is their
        // canonical JSON.
        let input = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.x, self.y
        );
        Sha256Digest::of_bytes(input.as_bytes())
    }

    /// Whether two JWKs name the same key (ignoring `kid` and other metadata).
    pub fn same_key(&self, other: &PublicJwk) -> bool {
        self.key == other.key
    }
}

/// A JWK set (RFC 7517 §5): the server's signing keys, pinned by the device at pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JwkSet {
    /// The keys; each has a `kid`.
    pub keys: Vec<PublicJwk>,
}

impl JwkSet {
    /// The key with the given `kid`.
    pub fn find(&self, kid: &str) -> Option<&PublicJwk> {
        self.keys.iter().find(|k| k.kid() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // RFC 7515 appendix A.3 example key.
    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn parses_a_valid_key_and_computes_the_rfc7638_thumbprint() {
        let jwk: PublicJwk =
            serde_json::from_value(json!({"kty":"EC","crv":"P-256","x":X,"y":Y})).unwrap();
        assert_eq!(jwk.x(), X);
        // Thumbprint is stable and 43 characters of base64url.
        assert_eq!(jwk.thumbprint().len(), 43);
        let again: PublicJwk = serde_json::from_value(serde_json::to_value(&jwk).unwrap()).unwrap();
        assert!(again.same_key(&jwk));
        assert_eq!(again.thumbprint(), jwk.thumbprint());
    }

    #[test]
    fn refuses_points_off_the_curve_and_other_curves() {
        let mut bad_y = URL_SAFE_NO_PAD.decode(Y).unwrap();
        bad_y[31] ^= 1;
        let off = json!({"kty":"EC","crv":"P-256","x":X,"y":URL_SAFE_NO_PAD.encode(bad_y)});
        let err = serde_json::from_value::<PublicJwk>(off).unwrap_err();
        assert!(err.to_string().contains("not a valid P-256 point"), "{err}");
        let p384 = json!({"kty":"EC","crv":"P-384","x":X,"y":Y});
        assert!(serde_json::from_value::<PublicJwk>(p384).is_err());
        let short = json!({"kty":"EC","crv":"P-256","x":"AAAA","y":Y});
        assert!(serde_json::from_value::<PublicJwk>(short).is_err());
        let rsa = json!({"kty":"RSA","n":"AQAB","e":"AQAB"});
        assert!(serde_json::from_value::<PublicJwk>(rsa).is_err());
        let hs = json!({"kty":"EC","crv":"P-256","x":X,"y":Y,"alg":"HS256"});
        assert!(serde_json::from_value::<PublicJwk>(hs).is_err());
    }
}
