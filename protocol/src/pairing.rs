//! Device pairing: pairing codes and URIs, the device's signed registration, the mobile payload
//! relayed through a customer backend, and the server's signed pairing reply (the server payload).
//!
//! # Direct pairing
//! 1. The customer backend asks the server for a pairing code for a user ([`crate::api::StartPairingResponse`]).
//! 2. The device signs a [`DeviceRegistration`] with its possession key, proves it also holds the
//!    user-verification key with a [`KeyProof`], and sends both with the code
//!    ([`crate::api::DevicePairingRequest`]).
//! 3. The server answers with a [`PairingReply`] signed by its key; the device checks it and pins
//!    the server's key set.
//!
//! # Relay pairing (mobile payload / server payload)
//! The device produces a [`MobilePayload`] (the same registration and proof, with no code), the
//! app hands it to its own backend, which has already authenticated the user and forwards it with
//! its API key. The backend gets a signed [`PairingReply`] back (the *server payload*) and hands it
//! to the app. The backend can alter neither: the registration is signed by the device and the
//! reply by the server, and the reply binds the registration's envelope digest.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::canonical::Sha256Digest;
use crate::ids::{ApplicationId, DeviceId, EnrollmentId, UserId};
use crate::jwk::{JwkSet, PublicJwk};
use crate::time::UnixSeconds;

/// How far a signed timestamp may lie in the future (clock skew), in seconds.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;
/// How old a registration may be when the server receives it, in seconds.
pub const MAX_REGISTRATION_AGE_SECONDS: i64 = 600;

/// Why a pairing code, URI or server URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingInputError {
    /// The code is not 12 characters of the pairing alphabet.
    #[error("pairing code is malformed: expected 12 letters and digits, like ABCD-EFGH-JKMN")]
    MalformedCode,
    /// The text is not a `tessera://pair` URI with a server and a code.
    #[error("pairing URI is malformed")]
    MalformedUri,
    /// The server URL is not an absolute http(s) URL without credentials, query or fragment.
    #[error("server URL is invalid: {0}")]
    InvalidServerUrl(&'static str),
}

/// Crockford's base32 alphabet: no I, L, O or U, so a code read aloud or typed is unambiguous.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_LEN: usize = 12;

/// A single-use pairing code: 12 characters of Crockford base32 (60 bits), shown as
/// `XXXX-XXXX-XXXX`. Parsing is forgiving the way people type: case, dashes and spaces are
/// ignored, `O` reads as `0` and `I`/`L` as `1`.
///
/// It is a secret until used: it is never logged (its `Debug` is redacted), the server stores
/// only its SHA-256 digest, and its memory is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode(Zeroizing<String>);

impl PairingCode {
    /// A fresh random code from the OS RNG.
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let s: String = (0..CODE_LEN)
            .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
            .collect();
        Self(Zeroizing::new(s))
    }

    /// Parses a code as a person typed it.
    pub fn parse(input: &str) -> Result<Self, PairingInputError> {
        if input.len() > 64 {
            return Err(PairingInputError::MalformedCode);
        }
        let mut out = Zeroizing::new(String::with_capacity(CODE_LEN));
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c if c.is_ascii() && CODE_ALPHABET.contains(&(c as u8)) => c,
                _ => return Err(PairingInputError::MalformedCode),
            };
            out.push(c);
        }
        if out.len() != CODE_LEN {
            return Err(PairingInputError::MalformedCode);
        }
        Ok(Self(out))
    }

    /// The code grouped for display: `XXXX-XXXX-XXXX`.
    pub fn display_form(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}-{}-{}",
            &self.0[0..4],
            &self.0[4..8],
            &self.0[8..12]
        ))
    }

    /// The normalized 12 characters.
    pub fn normalized(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the normalized code: what the server stores and looks codes up by. A code has
    /// 60 bits of entropy and lives minutes, so a fast hash is enough.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of_bytes(self.0.as_bytes())
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(<redacted>)")
    }
}

/// The base URL of a Tessera server, normalized: http or https, a host, no credentials, query or
/// fragment, no trailing slash. Its text is the server's *issuer* identity in signed messages.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerUrl(String);

crate::openapi_schema!(
    ServerUrl,
    string,
    "A server's base URL (http or https, no trailing slash)"
);

impl ServerUrl {
    /// Parses and normalizes a server URL.
    pub fn parse(input: &str) -> Result<Self, PairingInputError> {
        let url = Url::parse(input.trim())
            .map_err(|_| PairingInputError::InvalidServerUrl("not an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PairingInputError::InvalidServerUrl(
                "scheme must be http or https",
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(PairingInputError::InvalidServerUrl("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(PairingInputError::InvalidServerUrl(
                "credentials are not allowed",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(PairingInputError::InvalidServerUrl(
                "query and fragment are not allowed",
            ));
        }
        let text = url.as_str().trim_end_matches('/').to_string();
        Ok(Self(text))
    }

    /// The normalized URL text (the issuer).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL of an API path on this server (`path` starts with `/`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.0, path)
    }

    /// Whether the URL uses https.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match Url::parse(&self.0)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()))
        {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        }
    }
}

impl TryFrom<String> for ServerUrl {
    type Error = PairingInputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ServerUrl> for String {
    fn from(u: ServerUrl) -> String {
        u.0
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerUrl({})", self.0)
    }
}

/// A pairing URI, the content of the QR code shown next to a pairing code:
/// `tessera://pair?server=<server URL>&code=<code>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingUri {
    /// The server to pair with.
    pub server: ServerUrl,
    /// The single-use code.
    pub code: PairingCode,
}

impl fmt::Debug for PairingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingUri({}, code <redacted>)", self.server)
    }
}

impl PairingUri {
    /// The URI scheme.
    pub const SCHEME: &'static str = "tessera";

    /// Parses a scanned or pasted pairing URI.
    pub fn parse(input: &str) -> Result<Self, PairingInputError> {
        let url = Url::parse(input.trim()).map_err(|_| PairingInputError::MalformedUri)?;
        if url.scheme() != Self::SCHEME || url.host_str() != Some("pair") {
            return Err(PairingInputError::MalformedUri);
        }
        let mut server = None;
        let mut code = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "server" if server.is_none() => server = Some(ServerUrl::parse(&v)?),
                "code" if code.is_none() => code = Some(PairingCode::parse(&v)?),
                _ => return Err(PairingInputError::MalformedUri),
            }
        }
        match (server, code) {
            (Some(server), Some(code)) => Ok(Self { server, code }),
            _ => Err(PairingInputError::MalformedUri),
        }
    }

    /// The URI text. It contains the code: treat it as a secret.
    pub fn to_uri_string(&self) -> Zeroizing<String> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("server", self.server.as_str())
            .append_pair("code", &self.code.display_form())
            .finish();
        Zeroizing::new(format!("{}://pair?{query}", Self::SCHEME))
    }
}

/// What the device says about itself. Shown to administrators and relying parties; never used
/// as proof of anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Hardware model, e.g. `Pixel 8`.
    pub model: String,
    /// Operating system name, e.g. `Android`, `iOS`.
    pub os_name: String,
    /// Operating system version.
    pub os_version: String,
    /// Version of the app embedding the SDK.
    pub app_version: String,
    /// Version of the Tessera SDK.
    pub sdk_version: String,
    /// A name the user gave the device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What every signed answer says about the device as it is now: the app, OS and model may
/// change after pairing (an OS or app update), and the server keeps the enrollment's
/// [`DeviceInfo`] current from these. Like [`DeviceInfo`], a claim of the device, never proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceVersions {
    /// Hardware model, e.g. `Pixel 8`.
    pub model: String,
    /// Operating system version, e.g. `15`.
    pub os_version: String,
    /// Version of the app embedding the SDK.
    pub app_version: String,
}

impl DeviceVersions {
    /// The versions a [`DeviceInfo`] holds.
    pub fn of(info: &DeviceInfo) -> Self {
        Self {
            model: info.model.clone(),
            os_version: info.os_version.clone(),
            app_version: info.app_version.clone(),
        }
    }

    /// Whether `info` already says exactly this.
    pub fn matches(&self, info: &DeviceInfo) -> bool {
        self.model == info.model
            && self.os_version == info.os_version
            && self.app_version == info.app_version
    }

    /// `info` with these versions (its OS name, SDK version and name kept).
    pub fn applied_to(&self, info: &DeviceInfo) -> DeviceInfo {
        DeviceInfo {
            model: self.model.clone(),
            os_version: self.os_version.clone(),
            app_version: self.app_version.clone(),
            ..info.clone()
        }
    }
}

/// Device posture signals reported by the platform. `None` means "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSignals {
    /// The device is rooted or jailbroken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooted: Option<bool>,
    /// A screen lock (PIN, pattern, biometrics) is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_lock: Option<bool>,
    /// The device is managed by an MDM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm: Option<bool>,
    /// The app runs in an emulator or simulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulator: Option<bool>,
}

/// How the server can reach the device with a push.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "provider", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PushRegistration {
    /// No push: the device pulls its pending requests.
    #[default]
    None,
    /// Firebase Cloud Messaging registration token.
    Fcm {
        /// The FCM registration token.
        token: String,
    },
    /// Apple Push Notification service device token.
    Apns {
        /// The APNs device token (hex).
        token: String,
        /// `true` for the APNs sandbox (development builds).
        #[serde(default)]
        sandbox: bool,
    },
}

impl PushRegistration {
    /// The provider name: `none`, `fcm` or `apns`.
    pub fn provider(&self) -> &'static str {
        match self {
            PushRegistration::None => "none",
            PushRegistration::Fcm { .. } => "fcm",
            PushRegistration::Apns { .. } => "apns",
        }
    }
}

impl fmt::Debug for PushRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushRegistration({}, token <redacted>)", self.provider())
    }
}

/// A device's registration, signed with its possession key ([`crate::envelope::MessageType::Registration`]).
/// Its `kid` is the possession key's thumbprint.
///
/// The registration names the installation by its device key: `device_id` is
/// [`DeviceId::of_device_key`] of `device_key`, and `device_key_proof` (a [`DeviceKeyProof`]
/// signed with that key, naming this registration's possession key and nonce) proves the device
/// holds it. [`DeviceRegistration::check_device_key`] checks both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistration {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub v: u32,
    /// The server this registration is meant for: a registration for one server is refused by
    /// another.
    pub audience: ServerUrl,
    /// The installation's id: [`DeviceId::of_device_key`] of `device_key`.
    pub device_id: DeviceId,
    /// 128 random bits, base64url: makes every registration unique.
    pub nonce: String,
    /// When the device signed it.
    pub issued_at: UnixSeconds,
    /// Key used without user interaction (silent verification, device-authenticated calls).
    pub possession_key: PublicJwk,
    /// Key usable only after biometrics or device PIN (approvals).
    pub user_verification_key: PublicJwk,
    /// What the device says about itself.
    pub device: DeviceInfo,
    /// Posture signals.
    pub signals: DeviceSignals,
    /// How to push to it.
    pub push: PushRegistration,
    /// A P-256 key of this pairing only, to which the server seals the enrollment's OTP seed
    /// ([`crate::otp`]); absent: no seed is provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp_transport_key: Option<PublicJwk>,
    /// The installation's device key: one P-256 key per installation, kept in the platform key
    /// store for the life of the device state and used for nothing but these proofs. It is the
    /// device's identity: the server treats two registrations as the same device only when they
    /// prove the same device key.
    pub device_key: PublicJwk,
    /// The signed [`DeviceKeyProof`] for this registration.
    pub device_key_proof: String,
    /// The platform's attestation of the enrollment keys (Android Key Attestation) or of the app
    /// (Apple App Attest), made over [`DeviceRegistration::attestation_challenge`]; absent when the
    /// platform offers none. The server verifies it (see docs/attestation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<RegistrationAttestation>,
}

/// The domain separator of [`DeviceRegistration::attestation_challenge`].
pub const ATTESTATION_CHALLENGE_CONTEXT: &[u8] = b"tessera-attestation-challenge-v1";

/// A platform attestation carried by a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum RegistrationAttestation {
    /// Android Key Attestation: the certificate chains Android Keystore returned for the two
    /// enrollment keys, each created with the registration's attestation challenge. Every chain
    /// is leaf first, each certificate standard base64 of its DER.
    AndroidKey {
        /// The chain of the possession key.
        possession_chain: Vec<String>,
        /// The chain of the user-verification key.
        user_verification_chain: Vec<String>,
    },
    /// Apple App Attest: an attestation object (CBOR, standard base64) of an App Attest key,
    /// whose client data hash is the registration's attestation challenge.
    AppleAppAttest {
        /// The App Attest key id (standard base64 of SHA-256 of its public key).
        key_id: String,
        /// The attestation object, standard base64.
        attestation_object: String,
    },
}

impl DeviceRegistration {
    /// The attestation challenge of a registration: SHA-256 over
    /// `"tessera-attestation-challenge-v1" || 0x00 || audience || 0x00 || device_id || 0x00 || nonce`.
    ///
    /// It names the server, the installation (whose device key the registration proves) and the
    /// registration's random nonce, all known before the enrollment keys are created, so a chain
    /// or attestation object made for one registration fails in any other (see docs/protocol.md).
    pub fn attestation_challenge(
        audience: &ServerUrl,
        device_id: &DeviceId,
        nonce: &str,
    ) -> Sha256Digest {
        let mut input = Vec::with_capacity(
            ATTESTATION_CHALLENGE_CONTEXT.len() + audience.as_str().len() + nonce.len() + 80,
        );
        input.extend_from_slice(ATTESTATION_CHALLENGE_CONTEXT);
        input.push(0);
        input.extend_from_slice(audience.as_str().as_bytes());
        input.push(0);
        input.extend_from_slice(device_id.as_str().as_bytes());
        input.push(0);
        input.extend_from_slice(nonce.as_bytes());
        Sha256Digest::of_bytes(&input)
    }

    /// This registration's attestation challenge ([`DeviceRegistration::attestation_challenge`]).
    pub fn own_attestation_challenge(&self) -> Sha256Digest {
        Self::attestation_challenge(&self.audience, &self.device_id, &self.nonce)
    }
}

/// Why a registration's device identity was refused ([`DeviceRegistration::check_device_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeyError {
    /// `device_id` is not the id of `device_key`.
    #[error("the device id is not the id of the device key")]
    IdNotOfKey,
    /// The device key is also the possession or the user-verification key.
    #[error("the device key must differ from the enrollment's keys")]
    SharedKey,
    /// The proof is not a signed message, or is not signed with the device key.
    #[error("the device key proof is not signed with the device key")]
    BadSignature,
    /// The proof verifies but names another registration, server, device or version.
    #[error("the device key proof belongs to another registration")]
    Mismatch,
}

impl DeviceRegistration {
    /// A fresh 128-bit nonce, base64url.
    pub fn new_nonce() -> String {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill(&mut b);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// The [`DeviceKeyProof`] that binds this registration to its device key (what the device
    /// signs with that key and puts in `device_key_proof`).
    pub fn device_key_claims(&self) -> DeviceKeyProof {
        DeviceKeyProof {
            v: self.v,
            audience: self.audience.clone(),
            device_id: self.device_id.clone(),
            possession_key: self.possession_key.thumbprint(),
            nonce: self.nonce.clone(),
        }
    }

    /// Checks the registration's device identity: `device_id` is the id of `device_key`, the
    /// device key differs from the two enrollment keys, and `device_key_proof` is signed with the
    /// device key (its `kid` the key's thumbprint) and names this registration (version,
    /// audience, device id, possession key and nonce). Pure: the caller still verifies the
    /// registration's own signature, which covers the proof.
    pub fn check_device_key(&self) -> Result<(), DeviceKeyError> {
        if DeviceId::of_device_key(&self.device_key) != self.device_id {
            return Err(DeviceKeyError::IdNotOfKey);
        }
        if self.device_key.same_key(&self.possession_key)
            || self.device_key.same_key(&self.user_verification_key)
        {
            return Err(DeviceKeyError::SharedKey);
        }
        let header = crate::envelope::inspect(&self.device_key_proof)
            .map_err(|_| DeviceKeyError::BadSignature)?;
        if header.kid != self.device_key.thumbprint() {
            return Err(DeviceKeyError::BadSignature);
        }
        let proof = crate::envelope::verify::<DeviceKeyProof>(
            &self.device_key_proof,
            crate::envelope::MessageType::DeviceKeyProof,
            &self.device_key,
        )
        .map_err(|e| match e {
            crate::envelope::EnvelopeError::InvalidPayload(_) => DeviceKeyError::Mismatch,
            _ => DeviceKeyError::BadSignature,
        })?
        .payload;
        if proof != self.device_key_claims() {
            return Err(DeviceKeyError::Mismatch);
        }
        Ok(())
    }
}

/// Proof that the device holds its device key, bound to one registration: signed with the
/// device key ([`crate::envelope::MessageType::DeviceKeyProof`], `kid` the device key's
/// thumbprint) and carried inside the registration as `device_key_proof`.
///
/// It names the registration's possession key and nonce, and the registration is signed with
/// that possession key: so the proof cannot be lifted into another registration (that would
/// need the possession key it names, and a registration is used once), and a registration
/// cannot name a device key its sender does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKeyProof {
    /// Protocol version (the registration's).
    pub v: u32,
    /// The registration's audience.
    pub audience: ServerUrl,
    /// The registration's device id.
    pub device_id: DeviceId,
    /// The RFC 7638 thumbprint of the registration's possession key.
    pub possession_key: String,
    /// The registration's nonce.
    pub nonce: String,
}

/// Proof that the device holds the user-verification key: the registration's envelope digest,
/// signed with that key ([`crate::envelope::MessageType::KeyProof`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProof {
    /// Protocol version.
    pub v: u32,
    /// Envelope digest of the registration this proof belongs to.
    pub registration_digest: Sha256Digest,
}

/// The *mobile payload*: what the app hands to its backend for relay pairing. Opaque to the
/// backend; on the wire it is the unpadded base64url of this struct's canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MobilePayload {
    /// Protocol version.
    pub v: u32,
    /// The signed [`DeviceRegistration`].
    pub registration: String,
    /// The signed [`KeyProof`].
    pub user_verification_proof: String,
}

impl MobilePayload {
    /// Encodes the payload as the opaque string handed to the backend.
    pub fn encode(&self) -> Result<String, crate::canonical::CanonicalError> {
        Ok(URL_SAFE_NO_PAD.encode(crate::canonical::to_canonical_vec(self)?))
    }

    /// Decodes the opaque string. Checks nothing but the shape: the server verifies the
    /// signatures inside.
    pub fn decode(text: &str) -> Result<Self, PairingInputError> {
        if text.len() > 2 * crate::MAX_ENVELOPE_BYTES {
            return Err(PairingInputError::MalformedUri);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim().as_bytes())
            .map_err(|_| PairingInputError::MalformedUri)?;
        serde_json::from_slice(&bytes).map_err(|_| PairingInputError::MalformedUri)
    }
}

/// The application a device is paired with, as the server names it in signed messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplicationInfo {
    /// The application's id.
    pub id: ApplicationId,
    /// Its display name.
    pub name: String,
}

/// The server's pairing reply, the *server payload*, signed with one of the server's keys
/// ([`crate::envelope::MessageType::PairingReply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingReply {
    /// Protocol version.
    pub v: u32,
    /// The server's identity (its public base URL); must equal the registration's `audience`.
    pub issuer: ServerUrl,
    /// The application paired with.
    pub application: ApplicationInfo,
    /// The user paired.
    pub user_id: UserId,
    /// The new enrollment.
    pub enrollment_id: EnrollmentId,
    /// The device, as named in the registration.
    pub device_id: DeviceId,
    /// Envelope digest of the registration this reply answers.
    pub registration_digest: Sha256Digest,
    /// The server's signing keys, which the device pins.
    pub server_keys: JwkSet,
    /// The enrollment is not usable yet: the application verifies new devices with the user's
    /// primary device, which has been asked to approve this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_verification: bool,
    /// The enrollment's OTP seed, sealed to the registration's `otp_transport_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<crate::otp::ProvisionedOtp>,
    /// When the server signed it.
    pub issued_at: UnixSeconds,
}

/// The server's key set, signed by one of its current keys
/// ([`crate::envelope::MessageType::ServerKeySet`]). A device that has pinned keys accepts a new set
/// only if it is signed by a key it already trusts: that is how server keys rotate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerKeySet {
    /// Protocol version.
    pub v: u32,
    /// The server's identity.
    pub issuer: ServerUrl,
    /// The current keys.
    pub keys: JwkSet,
    /// When it was signed.
    pub issued_at: UnixSeconds,
    /// The set's number: each change of the published keys (rotation, retirement, revocation)
    /// is announced by a set one number higher, signed by a key of the set before it (see
    /// [`crate::key_set`]). Absent (0) in sets from before numbering.
    #[serde(default, skip_serializing_if = "crate::key_set::is_unnumbered")]
    pub sequence: u64,
    /// Key ids revoked so far (cumulative): never to be trusted again, not even as a link of a
    /// chain of key sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_versions_update_only_what_answers_carry() {
        let paired = DeviceInfo {
            model: "Pixel 8".into(),
            os_name: "Android".into(),
            os_version: "15".into(),
            app_version: "1.0".into(),
            sdk_version: "0.1.0".into(),
            name: Some("Work phone".into()),
        };
        let now = DeviceVersions {
            model: "Pixel 8".into(),
            os_version: "16".into(),
            app_version: "1.1".into(),
        };
        assert!(DeviceVersions::of(&paired).matches(&paired));
        assert!(!now.matches(&paired));
        let updated = now.applied_to(&paired);
        assert!(now.matches(&updated));
        assert_eq!(updated.os_name, "Android");
        assert_eq!(updated.sdk_version, "0.1.0");
        assert_eq!(updated.name.as_deref(), Some("Work phone"));
        // Strict on the wire: an unknown member is refused.
        assert!(
            serde_json::from_str::<DeviceVersions>(
                r#"{"model":"x","os_version":"1","app_version":"1","rooted":true}"#
            )
            .is_err()
        );
    }

    #[test]
    fn codes_are_generated_and_parsed_forgivingly() {
        let code = PairingCode::generate();
        let shown = code.display_form();
        assert_eq!(shown.len(), 14);
        assert_eq!(PairingCode::parse(&shown).unwrap(), code);
        assert_eq!(
            PairingCode::parse(&shown.to_lowercase()).unwrap(),
            code,
            "case-insensitive"
        );
        let a = PairingCode::parse("abcd efgh jkmn").unwrap();
        assert_eq!(a.normalized(), "ABCDEFGHJKMN");
        assert_eq!(
            PairingCode::parse("OIL0-0000-0000").unwrap().normalized(),
            "011000000000"
        );
        assert!(PairingCode::parse("ABCD-EFGH-JKM").is_err());
        assert!(PairingCode::parse("ABCD-EFGH-JKMNP").is_err());
        assert!(
            PairingCode::parse("ABCD-EFGH-JKMU").is_err(),
            "U is not in the alphabet"
        );
        assert!(PairingCode::parse("ÄBCD-EFGH-JKMN").is_err());
        assert_eq!(format!("{code:?}"), "PairingCode(<redacted>)");
    }

    #[test]
    fn server_urls_are_normalized_and_checked() {
        let u = ServerUrl::parse("https://auth.example.com/").unwrap();
        assert_eq!(u.as_str(), "https://auth.example.com");
        assert_eq!(u.endpoint("/v1/x"), "https://auth.example.com/v1/x");
        assert!(u.is_https() && !u.is_loopback());
        assert!(
            ServerUrl::parse("http://127.0.0.1:8080")
                .unwrap()
                .is_loopback()
        );
        assert!(ServerUrl::parse("http://[::1]:8080").unwrap().is_loopback());
        assert!(ServerUrl::parse("ftp://x").is_err());
        assert!(ServerUrl::parse("https://u:p@x").is_err());
        assert!(ServerUrl::parse("https://x/?a=b").is_err());
        assert!(ServerUrl::parse("not a url").is_err());
    }

    #[test]
    fn pairing_uris_round_trip() {
        let uri = PairingUri {
            server: ServerUrl::parse("http://127.0.0.1:8080").unwrap(),
            code: PairingCode::generate(),
        };
        let text = uri.to_uri_string();
        assert!(text.starts_with("tessera://pair?server=http"));
        assert_eq!(PairingUri::parse(&text).unwrap(), uri);
        assert!(PairingUri::parse("tessera://pair?server=http%3A%2F%2Fx").is_err());
        assert!(
            PairingUri::parse("https://pair?server=http%3A%2F%2Fx&code=ABCD-EFGH-JKMN").is_err()
        );
        assert!(
            PairingUri::parse("tessera://pair?server=http%3A%2F%2Fx&code=ABCD-EFGH-JKMN&x=1")
                .is_err()
        );
    }

    fn registration_of(
        device_key: &crate::envelope::SoftwareSigningKey,
    ) -> (DeviceRegistration, crate::envelope::SoftwareSigningKey) {
        use crate::envelope::{MessageType, SoftwareSigningKey, sign};
        let possession = SoftwareSigningKey::generate();
        let mut registration = DeviceRegistration {
            v: 1,
            audience: ServerUrl::parse("https://auth.example.com").unwrap(),
            device_id: DeviceId::of_device_key(&device_key.public_jwk()),
            nonce: DeviceRegistration::new_nonce(),
            issued_at: 1,
            possession_key: possession.public_jwk(),
            user_verification_key: SoftwareSigningKey::generate().public_jwk(),
            device: DeviceInfo::default(),
            signals: DeviceSignals::default(),
            push: PushRegistration::None,
            otp_transport_key: None,
            device_key: device_key.public_jwk(),
            device_key_proof: String::new(),
            attestation: None,
        };
        registration.device_key_proof = sign(
            MessageType::DeviceKeyProof,
            &registration.device_key_claims(),
            device_key,
        )
        .unwrap();
        (registration, possession)
    }

    #[test]
    fn the_device_key_proof_binds_the_id_the_key_and_the_registration() {
        use crate::envelope::{MessageType, SoftwareSigningKey, sign};
        let device_key = SoftwareSigningKey::generate();
        let (good, _) = registration_of(&device_key);
        assert_eq!(good.check_device_key(), Ok(()));

        // Another device's id, with this device's key and a genuine proof over that id.
        let victim = DeviceId::generate();
        let mut claimed = good.clone();
        claimed.device_id = victim;
        claimed.device_key_proof = sign(
            MessageType::DeviceKeyProof,
            &claimed.device_key_claims(),
            &device_key,
        )
        .unwrap();
        assert_eq!(claimed.check_device_key(), Err(DeviceKeyError::IdNotOfKey));

        // Somebody else's device key (public) without its private half.
        let victim_key = SoftwareSigningKey::generate();
        let mut borrowed = good.clone();
        borrowed.device_key = victim_key.public_jwk();
        borrowed.device_id = DeviceId::of_device_key(&borrowed.device_key);
        borrowed.device_key_proof = sign(
            MessageType::DeviceKeyProof,
            &borrowed.device_key_claims(),
            &device_key,
        )
        .unwrap();
        assert_eq!(
            borrowed.check_device_key(),
            Err(DeviceKeyError::BadSignature)
        );

        // A proof of the same key lifted from another registration.
        let (other, _) = registration_of(&device_key);
        let mut lifted = good.clone();
        lifted.device_key_proof = other.device_key_proof.clone();
        assert_eq!(lifted.check_device_key(), Err(DeviceKeyError::Mismatch));

        // A proof of another type (a user-verification key proof's typ).
        let mut wrong_type = good.clone();
        wrong_type.device_key_proof = sign(
            MessageType::KeyProof,
            &good.device_key_claims(),
            &device_key,
        )
        .unwrap();
        assert_eq!(
            wrong_type.check_device_key(),
            Err(DeviceKeyError::BadSignature)
        );

        // Garbage, and the device key doubling as the possession key.
        let mut garbage = good.clone();
        garbage.device_key_proof = "not.a.jws".into();
        assert_eq!(
            garbage.check_device_key(),
            Err(DeviceKeyError::BadSignature)
        );
        let mut shared = good.clone();
        shared.possession_key = shared.device_key.clone();
        assert_eq!(shared.check_device_key(), Err(DeviceKeyError::SharedKey));
    }

    #[test]
    fn push_tokens_are_not_printed() {
        let p = PushRegistration::Fcm {
            token: "secret-token".into(),
        };
        assert!(!format!("{p:?}").contains("secret"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"provider":"fcm","token":"secret-token"})
        );
    }
    #[test]
    fn the_attestation_challenge_matches_its_definition() {
        // SHA-256("tessera-attestation-challenge-v1" 0x00 audience 0x00 device_id 0x00 nonce),
        // computed independently (Python hashlib) for the registration of vectors/envelopes.json.
        let challenge = DeviceRegistration::attestation_challenge(
            &ServerUrl::parse("https://auth.example.com").unwrap(),
            &"dev_4d31a6e1ccee90d5f6383718c0867d11".parse().unwrap(),
            "AAECAwQFBgcICQoLDA0ODw",
        );
        assert_eq!(
            hex_of(challenge.as_bytes()),
            "c66f16d29bcdc944d5116e883d59e2c5accffe4da2f6c9eb9741882cf450d34c"
        );
        // Any other server, device or nonce gives another challenge.
        let other = DeviceRegistration::attestation_challenge(
            &ServerUrl::parse("https://other.example.com").unwrap(),
            &"dev_4d31a6e1ccee90d5f6383718c0867d11".parse().unwrap(),
            "AAECAwQFBgcICQoLDA0ODw",
        );
        assert_ne!(other, challenge);
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
