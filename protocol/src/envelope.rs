//! The signed envelope: a compact JWS (RFC 7515) with `alg` `ES256`, a `kid`, and a `typ` that
//! names the message, over a payload serialized as canonical JSON (RFC 8785).
//!
//! Signing goes through [`EnvelopeSigner`], so the private key can live in a platform key store
//! that only exposes "sign these bytes with the key called X". Verification checks the size, the
//! shape, `alg` (`ES256` only) and `typ`, then the fixed-length P-256 signature over the signing
//! input with `ring` (constant-time, and several times faster than a pure-Rust verifier), and only
//! then decodes the payload. [`RingSigningKey`] signs with `ring` too (the server's keys);
//! [`SoftwareSigningKey`] signs deterministically (RFC 6979) for test vectors and software key
//! stores.
//!
//! The *envelope digest* ([`Verified::digest`]) is SHA-256 over the JWS signing input
//! (`BASE64URL(header) || '.' || BASE64URL(payload)`). Other messages bind to an envelope through
//! it. It leaves out the signature, so ECDSA signature malleability cannot produce a second
//! digest for the same signed content.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::MAX_ENVELOPE_BYTES;
use crate::canonical::{Sha256Digest, to_canonical_vec};
use crate::jwk::{JwkSet, PublicJwk};

/// What a signed envelope carries, written into its `typ` header. A signature made for one kind
/// of message is never accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageType {
    /// A device's registration, signed with its possession key.
    Registration,
    /// Proof of possession of the user-verification key, bound to a registration.
    KeyProof,
    /// Proof of possession of the installation's device key, bound to a registration.
    DeviceKeyProof,
    /// The server's pairing reply (the *server payload*).
    PairingReply,
    /// The server's published key set.
    ServerKeySet,
    /// A device-authenticated API call.
    DeviceRequest,
    /// An authentication request to a device.
    AuthenticationRequest,
    /// A device's answer to an authentication request.
    AuthenticationResponse,
    /// A QR session's context, as the scanning device shows it.
    QrSessionContext,
    /// A device's answer to a QR session.
    QrResponse,
    /// A trusted device's authorization of a flow (seamless device authorization).
    DeviceAuthorization,
}

impl MessageType {
    /// The `typ` header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::Registration => "tessera-registration+jws",
            MessageType::KeyProof => "tessera-key-proof+jws",
            MessageType::DeviceKeyProof => "tessera-device-key-proof+jws",
            MessageType::PairingReply => "tessera-pairing-reply+jws",
            MessageType::ServerKeySet => "tessera-key-set+jws",
            MessageType::DeviceRequest => "tessera-device-request+jws",
            MessageType::AuthenticationRequest => "tessera-auth-request+jws",
            MessageType::AuthenticationResponse => "tessera-auth-response+jws",
            MessageType::QrSessionContext => "tessera-qr-context+jws",
            MessageType::QrResponse => "tessera-qr-response+jws",
            MessageType::DeviceAuthorization => "tessera-device-authorization+jws",
        }
    }
}

/// Signing failed inside the signer (a key store that refused or lost the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(pub String);

/// Something that signs with one P-256 key: a software key, or a key in a platform key store
/// referenced by alias. The private key never has to leave it.
pub trait EnvelopeSigner {
    /// The `kid` put in the header.
    fn key_id(&self) -> String;
    /// ECDSA P-256 / SHA-256 signature over `signing_input`.
    fn sign(&self, signing_input: &[u8]) -> Result<Signature, SignError>;
}

/// Why an envelope was refused. No variant carries key material or payload content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    #[error("signed message is too large")]
    TooLarge,
    /// Not a compact JWS, or its header is not valid JSON.
    #[error("signed message is malformed")]
    Malformed,
    /// `alg` is not `ES256`.
    #[error("signed message uses an algorithm other than ES256")]
    UnsupportedAlgorithm,
    /// `typ` is not the expected message type.
    #[error("signed message is of the wrong type (expected {expected})")]
    WrongType {
        /// The `typ` that was expected.
        expected: &'static str,
    },
    /// No `kid` in the header.
    #[error("signed message has no key id")]
    MissingKeyId,
    /// The `kid` names no key the verifier trusts.
    #[error("signed message is signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("signature is invalid")]
    BadSignature,
    /// The signature verified but the payload is not the expected message.
    #[error("signed message payload is invalid: {0}")]
    InvalidPayload(String),
    /// The payload could not be encoded canonically.
    #[error("payload cannot be encoded canonically")]
    Canonical,
    /// The signer failed.
    #[error(transparent)]
    Signer(#[from] SignError),
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// Signs `payload` as a compact JWS of the given type.
pub fn sign<T: Serialize>(
    typ: MessageType,
    payload: &T,
    signer: &dyn EnvelopeSigner,
) -> Result<String, EnvelopeError> {
    let kid = signer.key_id();
    let header = to_canonical_vec(&Header {
        alg: "ES256",
        kid: &kid,
        typ: typ.as_str(),
    })
    .map_err(|_| EnvelopeError::Canonical)?;
    let payload = to_canonical_vec(payload).map_err(|_| EnvelopeError::Canonical)?;
    let mut jws = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = signer.sign(jws.as_bytes())?;
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    if jws.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    Ok(jws)
}

/// The unverified header of an envelope: what to look the key up by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// The `kid`.
    pub kid: String,
    /// The `typ`.
    pub typ: String,
}

/// A payload whose signature verified.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    /// The payload.
    pub payload: T,
    /// The `kid` of the key that signed it.
    pub kid: String,
    /// SHA-256 over the JWS signing input (see the module documentation).
    pub digest: Sha256Digest,
}

/// The protected header as sent.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

/// The JWS algorithm names of RFC 7518 that signers may use.
const JWS_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
    "PS384", "PS512", "EdDSA",
];

/// Reads the header without verifying anything. Use it only to choose the key to verify with.
pub fn inspect(jws: &str) -> Result<EnvelopeHeader, EnvelopeError> {
    check_shape(jws)?;
    let encoded = jws.split('.').next().ok_or(EnvelopeError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded.as_bytes())
        .map_err(|_| EnvelopeError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&bytes).map_err(|_| EnvelopeError::Malformed)?;
    if header.alg != "ES256" {
        // A registered JWS algorithm other than ES256 is refused as such; anything else
        // (including `none`) is not a JWS header this verifier reads.
        return Err(if JWS_ALGORITHMS.contains(&header.alg.as_str()) {
            EnvelopeError::UnsupportedAlgorithm
        } else {
            EnvelopeError::Malformed
        });
    }
    Ok(EnvelopeHeader {
        kid: header.kid.ok_or(EnvelopeError::MissingKeyId)?,
        typ: header.typ.unwrap_or_default(),
    })
}

/// Decodes the payload **without verifying the signature**.
///
/// Only for self-signed messages whose verification key travels inside the payload (a device's
/// registration): read the key from the untrusted payload, then call [`verify`] with it.
pub fn unverified_payload<T: DeserializeOwned>(jws: &str) -> Result<T, EnvelopeError> {
    check_shape(jws)?;
    let payload = jws.split('.').nth(1).ok_or(EnvelopeError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.as_bytes())
        .map_err(|_| EnvelopeError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|e| EnvelopeError::InvalidPayload(safe_reason(&e)))
}

/// Verifies an envelope of type `typ` signed by `key` and decodes its payload.
pub fn verify<T: DeserializeOwned>(
    jws: &str,
    typ: MessageType,
    key: &PublicJwk,
) -> Result<Verified<T>, EnvelopeError> {
    let header = inspect(jws)?;
    if header.typ != typ.as_str() {
        return Err(EnvelopeError::WrongType {
            expected: typ.as_str(),
        });
    }
    check_shape(jws)?;
    let (signing_input, signature) = jws.rsplit_once('.').ok_or(EnvelopeError::Malformed)?;
    let (_, payload) = signing_input
        .split_once('.')
        .ok_or(EnvelopeError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature.as_bytes())
        .map_err(|_| EnvelopeError::Malformed)?;
    if signature.len() != 64 {
        return Err(EnvelopeError::BadSignature);
    }
    let public_key = uncompressed_point(key)?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        public_key.as_slice(),
    )
    .verify(signing_input.as_bytes(), &signature)
    .map_err(|_| EnvelopeError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload.as_bytes())
        .map_err(|_| EnvelopeError::Malformed)?;
    let claims: T = serde_json::from_slice(&payload)
        .map_err(|e| EnvelopeError::InvalidPayload(safe_reason(&e)))?;
    Ok(Verified {
        payload: claims,
        kid: header.kid,
        digest: Sha256Digest::of_bytes(signing_input.as_bytes()),
    })
}

/// The SEC 1 uncompressed point (`0x04 || x || y`) of a public JWK.
fn uncompressed_point(key: &PublicJwk) -> Result<Vec<u8>, EnvelopeError> {
    let x = URL_SAFE_NO_PAD
        .decode(key.x().as_bytes())
        .map_err(|_| EnvelopeError::UnknownKey)?;
    let y = URL_SAFE_NO_PAD
        .decode(key.y().as_bytes())
        .map_err(|_| EnvelopeError::UnknownKey)?;
    if x.len() != 32 || y.len() != 32 {
        return Err(EnvelopeError::UnknownKey);
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// Verifies an envelope against a key set, choosing the key by `kid`.
pub fn verify_with_set<T: DeserializeOwned>(
    jws: &str,
    typ: MessageType,
    keys: &JwkSet,
) -> Result<Verified<T>, EnvelopeError> {
    let header = inspect(jws)?;
    let key = keys.find(&header.kid).ok_or(EnvelopeError::UnknownKey)?;
    verify(jws, typ, key)
}

/// The envelope digest of a compact JWS, computed without verifying it.
pub fn digest_of(jws: &str) -> Result<Sha256Digest, EnvelopeError> {
    check_shape(jws)?;
    let (signing_input, _) = jws.rsplit_once('.').ok_or(EnvelopeError::Malformed)?;
    Ok(Sha256Digest::of_bytes(signing_input.as_bytes()))
}

fn check_shape(jws: &str) -> Result<(), EnvelopeError> {
    if jws.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    let parts = jws.split('.').count();
    if parts != 3
        || !jws
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(EnvelopeError::Malformed);
    }
    Ok(())
}

/// serde's messages name fields and types, never values: safe to show.
fn safe_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A P-256 signing key held in memory: the server's keys, the software key store, tests.
/// The key is zeroized when dropped.
#[derive(Clone)]
pub struct SoftwareSigningKey {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for SoftwareSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftwareSigningKey(kid {})", self.kid)
    }
}

impl SoftwareSigningKey {
    /// A fresh key from the OS RNG; its `kid` is its RFC 7638 thumbprint.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// Wraps an existing key; its `kid` is its RFC 7638 thumbprint.
    pub fn from_signing_key(key: SigningKey) -> Self {
        let kid = PublicJwk::from_verifying_key(key.verifying_key()).thumbprint();
        Self { key, kid }
    }

    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SignError> {
        SigningKey::from_pkcs8_der(der)
            .map(Self::from_signing_key)
            .map_err(|_| SignError("stored key is not a P-256 PKCS#8 key".into()))
    }

    /// Loads a key from its 32-byte scalar (test vectors).
    pub fn from_scalar_bytes(bytes: &[u8]) -> Result<Self, SignError> {
        SigningKey::from_slice(bytes)
            .map(Self::from_signing_key)
            .map_err(|_| SignError("not a P-256 private scalar".into()))
    }

    /// The key as PKCS#8 DER, in memory that is zeroized on drop.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, SignError> {
        self.key
            .to_pkcs8_der()
            .map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|_| SignError("key cannot be encoded".into()))
    }

    /// The public key as a JWK whose `kid` is this key's `kid`.
    pub fn public_jwk(&self) -> PublicJwk {
        PublicJwk::from_verifying_key(self.key.verifying_key()).with_kid(self.kid.clone())
    }

    /// The `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// A P-256 signing key used through `ring`: randomized ECDSA signatures, several times faster to
/// make than [`SoftwareSigningKey`]'s. The server signs with these.
pub struct RingSigningKey {
    pair: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    kid: String,
}

impl std::fmt::Debug for RingSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingSigningKey(kid {})", self.kid)
    }
}

impl RingSigningKey {
    /// The same key as `key`, for signing with `ring` (same `kid`, same public key).
    pub fn from_software(key: &SoftwareSigningKey) -> Result<Self, SignError> {
        let scalar = Zeroizing::new(key.key.to_bytes().to_vec());
        let public = key.key.verifying_key().to_encoded_point(false);
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &scalar,
            public.as_bytes(),
            &rng,
        )
        .map_err(|_| SignError("not a usable P-256 key".into()))?;
        Ok(Self {
            pair,
            rng,
            kid: key.kid.clone(),
        })
    }

    /// The `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

impl EnvelopeSigner for RingSigningKey {
    fn key_id(&self) -> String {
        self.kid.clone()
    }
    fn sign(&self, signing_input: &[u8]) -> Result<Signature, SignError> {
        let signature = self
            .pair
            .sign(&self.rng, signing_input)
            .map_err(|_| SignError("signing failed".into()))?;
        Signature::from_slice(signature.as_ref())
            .map_err(|_| SignError("signing produced an invalid signature".into()))
    }
}

impl EnvelopeSigner for SoftwareSigningKey {
    fn key_id(&self) -> String {
        self.kid.clone()
    }
    fn sign(&self, signing_input: &[u8]) -> Result<Signature, SignError> {
        Ok(self.key.sign(signing_input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Msg {
        b: u32,
        a: String,
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = SoftwareSigningKey::generate();
        let msg = Msg {
            b: 7,
            a: "x".into(),
        };
        let jws = sign(MessageType::Registration, &msg, &key).unwrap();
        let ok: Verified<Msg> = verify(&jws, MessageType::Registration, &key.public_jwk()).unwrap();
        assert_eq!(ok.payload, msg);
        assert_eq!(ok.kid, key.kid());
        assert_eq!(ok.digest, digest_of(&jws).unwrap());

        // Wrong type.
        assert!(matches!(
            verify::<Msg>(&jws, MessageType::PairingReply, &key.public_jwk()),
            Err(EnvelopeError::WrongType { .. })
        ));
        // Other key.
        let other = SoftwareSigningKey::generate();
        assert_eq!(
            verify::<Msg>(&jws, MessageType::Registration, &other.public_jwk()).unwrap_err(),
            EnvelopeError::BadSignature
        );
        // Unknown kid in a set.
        let set = JwkSet {
            keys: vec![other.public_jwk()],
        };
        assert_eq!(
            verify_with_set::<Msg>(&jws, MessageType::Registration, &set).unwrap_err(),
            EnvelopeError::UnknownKey
        );
        // Garbage.
        assert_eq!(inspect("a.b").unwrap_err(), EnvelopeError::Malformed);
        assert_eq!(inspect("a.b.c d").unwrap_err(), EnvelopeError::Malformed);
        let huge = "a".repeat(MAX_ENVELOPE_BYTES + 1);
        assert_eq!(inspect(&huge).unwrap_err(), EnvelopeError::TooLarge);
    }

    #[test]
    fn alg_none_and_hs256_are_refused() {
        let key = SoftwareSigningKey::generate();
        let payload = URL_SAFE_NO_PAD.encode(br#"{"a":"x","b":7}"#);
        for alg in ["none", "HS256", "ES384"] {
            let header = URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"{alg}","kid":"{}","typ":"tessera-registration+jws"}}"#,
                key.kid()
            ));
            let jws = format!("{header}.{payload}.AAAA");
            let err =
                verify::<Msg>(&jws, MessageType::Registration, &key.public_jwk()).unwrap_err();
            assert!(
                matches!(
                    err,
                    EnvelopeError::UnsupportedAlgorithm | EnvelopeError::Malformed
                ),
                "{alg}: {err:?}"
            );
        }
    }

    #[test]
    fn a_ring_key_signs_what_the_same_software_key_verifies() {
        let software = SoftwareSigningKey::generate();
        let fast = RingSigningKey::from_software(&software).expect("ring key");
        assert_eq!(fast.kid(), software.kid());
        let msg = Msg {
            b: 7,
            a: "x".into(),
        };
        let jws = sign(MessageType::DeviceRequest, &msg, &fast).expect("sign");
        let verified: Verified<Msg> =
            verify(&jws, MessageType::DeviceRequest, &software.public_jwk()).expect("verify");
        assert_eq!(verified.payload, msg);
        let other = SoftwareSigningKey::generate();
        assert_eq!(
            verify::<Msg>(&jws, MessageType::DeviceRequest, &other.public_jwk()).unwrap_err(),
            EnvelopeError::BadSignature
        );
    }
}
