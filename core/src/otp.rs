//! Offline one-time passcodes: HOTP (RFC 4226) and TOTP (RFC 6238) for third-party accounts.
//!
//! A user adds an account of another service (a web site's "set up an authenticator app" QR
//! code) by importing its `otpauth://` key URI, in the Google Authenticator key-URI format:
//!
//! ```text
//! otpauth://totp/Example%20Co:alice@example.com?secret=JBSWY3DPEHPK3PXP&issuer=Example%20Co&algorithm=SHA1&digits=6&period=30
//! otpauth://hotp/Example:alice?secret=JBSWY3DPEHPK3PXP&issuer=Example&counter=0
//! ```
//!
//! [`OtpKey::from_uri`] parses it strictly (see [`OtpUriError`] for every refusal); the
//! [`crate::Authenticator`] keeps the key inside its encrypted state and generates codes with
//! [`hotp`] and [`totp`] (HMAC-SHA-1/256/512 and RFC 4226 dynamic truncation).
//!
//! # Rules
//! - **Secret**: RFC 4648 base32 (letters in either case, `=` padding optional but, if present,
//!   complete; no spaces or other characters; unused trailing bits must be zero).
//!   RFC 4226 (R6) requires at least 128 bits and recommends 160. Many services still issue
//!   80-bit secrets (16 base32 characters), so the rule is: **fewer than 80 bits is refused**
//!   ([`OtpUriError::SecretTooShort`]); **80 to 127 bits is accepted and flagged**
//!   ([`OtpKey::short_secret`], shown as [`OtpAccount::short_secret`] so an app can warn);
//!   128 bits or more is normal. More than 1024 bits (128 bytes) is refused
//!   ([`OtpUriError::SecretTooLong`]).
//! - **Digits**: 6, 7 or 8 (default 6). **Period** (TOTP): 1 to 3600 seconds (default 30).
//!   **Algorithm**: `SHA1` (default), `SHA256`, `SHA512`, in any letter case. **Counter**: required
//!   for HOTP, a decimal `u64`.
//! - **Label**: `account` or `issuer:account` (percent-encoded; spaces after the colon are
//!   ignored). Neither part may be empty, contain a colon, or contain control characters; each
//!   is at most 256 characters. If both the label prefix and the `issuer` parameter are present
//!   they must be equal ([`OtpUriError::IssuerMismatch`]).
//! - **Parameters**: each known parameter at most once ([`OtpUriError::DuplicateParameter`]);
//!   `period` on HOTP and `counter` on TOTP are refused ([`OtpUriError::ParameterNotForType`]);
//!   unknown parameters (such as `image`) are ignored. In the query `+` reads as a space.
//!
//! # Secrets
//! The secret lives in an [`OtpSeed`]: zeroized on drop, `Debug` prints `OtpSeed(redacted)`, and
//! no error of this module or of [`crate::CoreError`] carries it (or any part of the URI).
//! [`OneTimePasscode`]'s `Debug` hides the code as well.
//!
//! # Seeds provisioned at pairing (not yet wired)
//! Today every account is imported by the user ([`OtpAccountSource::Imported`]). Seeds that a
//! Tessera server provisions for one of its own enrollments will arrive later **inside the signed
//! pairing reply** (so they are covered by the server signature the device already checks and
//! pinned-key trust), and be stored with a source naming that enrollment; nothing in this module
//! talks to a server.

use std::fmt;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tessera_protocol::otp::decode_base32;
use zeroize::Zeroizing;

use crate::error::CoreError;

/// The fewest secret bits accepted at all.
pub const MIN_SECRET_BITS: usize = 80;
/// The fewest secret bits RFC 4226 (R6) requires; shorter accepted secrets are flagged.
pub const RFC_MIN_SECRET_BITS: usize = 128;
/// The most secret bits accepted.
pub const MAX_SECRET_BITS: usize = 1024;
/// The longest issuer or account name accepted, in characters.
pub const MAX_LABEL_CHARS: usize = 256;
/// The longest TOTP period accepted, in seconds.
pub const MAX_PERIOD_SECONDS: u32 = 3600;

/// The HMAC hash function of an OTP key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtpAlgorithm {
    /// HMAC-SHA-1: the default, and what nearly every service uses.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl OtpAlgorithm {
    /// The name used in `otpauth://` URIs (`SHA1`, `SHA256`, `SHA512`).
    pub fn uri_name(self) -> &'static str {
        match self {
            OtpAlgorithm::Sha1 => "SHA1",
            OtpAlgorithm::Sha256 => "SHA256",
            OtpAlgorithm::Sha512 => "SHA512",
        }
    }
}

/// Time-based or counter-based, with the moving factor's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OtpKind {
    /// TOTP (RFC 6238): the moving factor is the Unix time divided by `period` seconds.
    Totp {
        /// The time step in seconds (1 to 3600; usually 30).
        period: u32,
    },
    /// HOTP (RFC 4226): the moving factor is a counter.
    Hotp {
        /// The counter value the next code will use (each code uses one value, then it moves
        /// on).
        counter: u64,
    },
}

/// The number of digits of a code: 6, 7 or 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct OtpDigits(u8);

impl OtpDigits {
    /// Six digits, the default.
    pub const SIX: OtpDigits = OtpDigits(6);

    /// `digits` if it is 6, 7 or 8.
    pub fn new(digits: u8) -> Option<Self> {
        (6..=8).contains(&digits).then_some(Self(digits))
    }

    /// The number of digits.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for OtpDigits {
    type Error = OtpUriError;
    fn try_from(digits: u8) -> Result<Self, Self::Error> {
        Self::new(digits).ok_or(OtpUriError::InvalidDigits)
    }
}

impl From<OtpDigits> for u8 {
    fn from(d: OtpDigits) -> u8 {
        d.0
    }
}

/// The shared secret of an OTP key (the HMAC key).
///
/// Zeroized on drop; `Debug` never shows it. It is serialized (base64url, for the device's
/// encrypted state only) but never displayed, logged or put in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpSeed(Zeroizing<Vec<u8>>);

impl OtpSeed {
    /// A seed of these bytes. Fails (without echoing them) if there are fewer than
    /// [`MIN_SECRET_BITS`] or more than [`MAX_SECRET_BITS`] bits.
    pub fn new(bytes: Vec<u8>) -> Result<Self, OtpUriError> {
        let bytes = Zeroizing::new(bytes);
        let bits = bytes.len() * 8;
        if bits < MIN_SECRET_BITS {
            return Err(OtpUriError::SecretTooShort { bits });
        }
        if bits > MAX_SECRET_BITS {
            return Err(OtpUriError::SecretTooLong { bits });
        }
        Ok(Self(bytes))
    }

    /// The seed's length in bits.
    pub fn bits(&self) -> usize {
        self.0.len() * 8
    }

    /// The secret bytes, for the HMAC only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for OtpSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpSeed(redacted)")
    }
}

impl Serialize for OtpSeed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        let text =
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*self.0));
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for OtpSeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("malformed OTP seed"))?;
        OtpSeed::new(bytes).map_err(|_| serde::de::Error::custom("OTP seed of a refused length"))
    }
}

/// Why an `otpauth://` URI was refused. Never holds the secret or any other part of the URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OtpUriError {
    /// The text does not start with `otpauth://`.
    #[error("not an otpauth:// URI")]
    NotOtpauth,
    /// The type (host) is neither `totp` nor `hotp`.
    #[error("unknown OTP type (expected totp or hotp)")]
    UnknownType,
    /// The URI's structure is broken: no label, a fragment, bad percent-encoding or not UTF-8.
    #[error("malformed otpauth URI")]
    Malformed,
    /// The label is empty, has more than one colon, an empty part, control characters, or is
    /// too long.
    #[error("invalid account label")]
    InvalidLabel,
    /// The `issuer` parameter is empty, has a colon or control characters, or is too long.
    #[error("invalid issuer parameter")]
    InvalidIssuer,
    /// The label's issuer prefix and the `issuer` parameter differ.
    #[error("the label's issuer and the issuer parameter differ")]
    IssuerMismatch,
    /// No `secret` parameter, or an empty one.
    #[error("the secret is missing")]
    MissingSecret,
    /// The secret is not valid base32.
    #[error("the secret is not valid base32")]
    InvalidSecret,
    /// The secret is shorter than [`MIN_SECRET_BITS`].
    #[error("the secret is too short ({bits} bits; at least 80 are required, 160 recommended)")]
    SecretTooShort {
        /// The secret's length in bits.
        bits: usize,
    },
    /// The secret is longer than [`MAX_SECRET_BITS`].
    #[error("the secret is too long ({bits} bits; at most 1024)")]
    SecretTooLong {
        /// The secret's length in bits.
        bits: usize,
    },
    /// `digits` is not 6, 7 or 8.
    #[error("digits must be 6, 7 or 8")]
    InvalidDigits,
    /// `period` is not a whole number of seconds from 1 to 3600.
    #[error("period must be 1 to 3600 seconds")]
    InvalidPeriod,
    /// `algorithm` is not SHA1, SHA256 or SHA512.
    #[error("algorithm must be SHA1, SHA256 or SHA512")]
    InvalidAlgorithm,
    /// An HOTP URI without `counter`.
    #[error("an hotp URI needs a counter")]
    MissingCounter,
    /// `counter` is not a decimal unsigned 64-bit number.
    #[error("counter must be a decimal number below 2^64")]
    InvalidCounter,
    /// A parameter appears more than once.
    #[error("parameter {name} appears more than once")]
    DuplicateParameter {
        /// The parameter's name.
        name: &'static str,
    },
    /// `period` on an HOTP URI or `counter` on a TOTP URI.
    #[error("parameter {name} does not apply to this OTP type")]
    ParameterNotForType {
        /// The parameter's name.
        name: &'static str,
    },
}

impl OtpUriError {
    /// A stable code for the refusal, for apps and bindings to match on.
    pub fn code(&self) -> &'static str {
        match self {
            OtpUriError::NotOtpauth => "not_otpauth",
            OtpUriError::UnknownType => "unknown_type",
            OtpUriError::Malformed => "malformed",
            OtpUriError::InvalidLabel => "invalid_label",
            OtpUriError::InvalidIssuer => "invalid_issuer",
            OtpUriError::IssuerMismatch => "issuer_mismatch",
            OtpUriError::MissingSecret => "missing_secret",
            OtpUriError::InvalidSecret => "invalid_secret",
            OtpUriError::SecretTooShort { .. } => "secret_too_short",
            OtpUriError::SecretTooLong { .. } => "secret_too_long",
            OtpUriError::InvalidDigits => "invalid_digits",
            OtpUriError::InvalidPeriod => "invalid_period",
            OtpUriError::InvalidAlgorithm => "invalid_algorithm",
            OtpUriError::MissingCounter => "missing_counter",
            OtpUriError::InvalidCounter => "invalid_counter",
            OtpUriError::DuplicateParameter { .. } => "duplicate_parameter",
            OtpUriError::ParameterNotForType { .. } => "parameter_not_for_type",
        }
    }
}

/// Everything needed to generate an account's codes: labels, parameters and the seed.
///
/// `Debug` shows the labels and parameters, never the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpKey {
    /// The service (`Example Co`), from the label prefix or the `issuer` parameter.
    pub issuer: Option<String>,
    /// The user's account at that service (`alice@example.com`).
    pub account_name: String,
    /// The HMAC hash function.
    pub algorithm: OtpAlgorithm,
    /// Digits per code.
    pub digits: OtpDigits,
    /// TOTP with its period or HOTP with its next counter value.
    pub kind: OtpKind,
    /// The shared secret.
    pub seed: OtpSeed,
}

impl OtpKey {
    /// Parses an `otpauth://` key URI strictly (see the module documentation for the rules).
    pub fn from_uri(uri: &str) -> Result<Self, OtpUriError> {
        parse_uri(uri.trim())
    }

    /// Whether the seed is shorter than the 128 bits RFC 4226 requires (80 to 127 bits are
    /// accepted for compatibility with services that still issue them).
    pub fn short_secret(&self) -> bool {
        self.seed.bits() < RFC_MIN_SECRET_BITS
    }
}

/// A one-time passcode to show the user.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimePasscode {
    /// The code: 6 to 8 decimal digits, leading zeros kept.
    pub code: String,
    /// TOTP: how long the code stays valid (the seconds left in its period). HOTP: `None` (valid
    /// until the service accepts a later one).
    pub valid_for: Option<Duration>,
}

impl fmt::Debug for OneTimePasscode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePasscode")
            .field("code", &"redacted")
            .field("valid_for", &self.valid_for)
            .finish()
    }
}

/// A device-local identifier of an OTP account: `otp_` and 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OtpAccountId(String);

impl OtpAccountId {
    const PREFIX: &'static str = "otp_";

    /// A fresh random identifier (128 bits from the OS RNG).
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{}{hex}", Self::PREFIX))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OtpAccountId {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = s.strip_prefix(Self::PREFIX).is_some_and(|rest| {
            rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(Self(s))
        } else {
            Err(CoreError::InvalidInput("malformed OTP account id".into()))
        }
    }
}

impl std::str::FromStr for OtpAccountId {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_string())
    }
}

impl From<OtpAccountId> for String {
    fn from(id: OtpAccountId) -> String {
        id.0
    }
}

impl fmt::Display for OtpAccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OtpAccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an OTP account's seed came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OtpAccountSource {
    /// Imported by the user from an `otpauth://` URI (a third-party account).
    #[default]
    Imported,
    /// Provisioned by a Tessera server at pairing, sealed inside the signed pairing reply: the
    /// enrollment's own codes (`MOBILE_APP_OTP`), removed with the enrollment.
    Enrollment {
        /// The enrollment the seed belongs to.
        enrollment_id: tessera_protocol::ids::EnrollmentId,
    },
}

/// An OTP account as the app sees it: labels and parameters, never the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpAccount {
    /// The account's id on this device.
    pub id: OtpAccountId,
    /// The service, if the URI named one.
    pub issuer: Option<String>,
    /// The user's account at the service.
    pub account_name: String,
    /// TOTP with its period, or HOTP with the counter value the next code will use.
    pub kind: OtpKind,
    /// Digits per code.
    pub digits: OtpDigits,
    /// The HMAC hash function.
    pub algorithm: OtpAlgorithm,
    /// The seed is shorter than RFC 4226's 128 bits (80 to 127 bits); an app may warn.
    pub short_secret: bool,
    /// Where the seed came from.
    pub source: OtpAccountSource,
}

/// The HOTP value (RFC 4226, section 5.3) of `counter`: HMAC, dynamic truncation, modulo
/// 10^digits, zero-padded.
pub fn hotp(
    seed: &OtpSeed,
    algorithm: OtpAlgorithm,
    digits: OtpDigits,
    counter: u64,
) -> Result<String, CoreError> {
    let hash = match algorithm {
        OtpAlgorithm::Sha1 => tessera_protocol::otp::OtpHash::Sha1,
        OtpAlgorithm::Sha256 => tessera_protocol::otp::OtpHash::Sha256,
        OtpAlgorithm::Sha512 => tessera_protocol::otp::OtpHash::Sha512,
    };
    let code = tessera_protocol::otp::hotp(seed.expose(), hash, u32::from(digits.get()), counter)
        .map_err(|_| {
        CoreError::InvalidInput("the OTP seed was refused as an HMAC key".into())
    })?;
    Ok(code.to_string())
}

/// The TOTP code (RFC 6238) at `unix_time` (seconds; a time before 1970 reads as 0), and how
/// many seconds of its period are left.
pub fn totp(
    seed: &OtpSeed,
    algorithm: OtpAlgorithm,
    digits: OtpDigits,
    period: u32,
    unix_time: i64,
) -> Result<OneTimePasscode, CoreError> {
    if period == 0 || period > MAX_PERIOD_SECONDS {
        return Err(CoreError::InvalidInput(
            "the TOTP period must be 1 to 3600 seconds".into(),
        ));
    }
    let t = u64::try_from(unix_time).unwrap_or(0);
    let period = u64::from(period);
    let code = hotp(seed, algorithm, digits, t / period)?;
    Ok(OneTimePasscode {
        code,
        valid_for: Some(Duration::from_secs(period - t % period)),
    })
}

fn percent_decode(text: &str) -> Result<String, OtpUriError> {
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| OtpUriError::Malformed)?;
    // `percent_decode_str` passes a malformed escape (`%4`, `%zz`) through: refuse it.
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(OtpUriError::Malformed);
        }
    }
    Ok(decoded.into_owned())
}

fn valid_label_part(part: &str) -> bool {
    !part.is_empty()
        && part.chars().count() <= MAX_LABEL_CHARS
        && !part.contains(':')
        && !part.chars().any(char::is_control)
}

fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), OtpUriError> {
    if slot.is_some() {
        return Err(OtpUriError::DuplicateParameter { name });
    }
    *slot = Some(value);
    Ok(())
}

fn parse_uri(uri: &str) -> Result<OtpKey, OtpUriError> {
    const SCHEME: &str = "otpauth://";
    let rest = match uri.get(..SCHEME.len()) {
        Some(s) if s.eq_ignore_ascii_case(SCHEME) => &uri[SCHEME.len()..],
        _ => return Err(OtpUriError::NotOtpauth),
    };
    if rest.contains('#') {
        return Err(OtpUriError::Malformed);
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (kind_name, raw_label) = path.split_once('/').ok_or(OtpUriError::Malformed)?;
    let totp = if kind_name.eq_ignore_ascii_case("totp") {
        true
    } else if kind_name.eq_ignore_ascii_case("hotp") {
        false
    } else {
        return Err(OtpUriError::UnknownType);
    };

    // The label: `account` or `issuer:account` (the colon possibly encoded), no `+` as space.
    let label = percent_decode(raw_label)?;
    let (label_issuer, account_name) = match label.split_once(':') {
        None => (None, label.as_str()),
        Some((issuer, account)) => (Some(issuer), account.trim_start_matches(' ')),
    };
    if !valid_label_part(account_name) || label_issuer.is_some_and(|i| !valid_label_part(i)) {
        return Err(OtpUriError::InvalidLabel);
    }

    let mut secret: Option<Zeroizing<String>> = None;
    let mut issuer: Option<String> = None;
    let mut algorithm: Option<OtpAlgorithm> = None;
    let mut digits: Option<OtpDigits> = None;
    let mut period: Option<u32> = None;
    let mut counter: Option<u64> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(&raw_name.replace('+', " "))?;
        // The value may be the secret: no copy of it outlives this iteration un-wiped.
        let spaced = Zeroizing::new(raw_value.replace('+', " "));
        let value = Zeroizing::new(percent_decode(&spaced)?);
        match name.as_str() {
            "secret" => set_once(&mut secret, value, "secret")?,
            "issuer" => {
                if !valid_label_part(&value) {
                    return Err(OtpUriError::InvalidIssuer);
                }
                set_once(&mut issuer, value.to_string(), "issuer")?
            }
            "algorithm" => {
                let a = if value.eq_ignore_ascii_case("SHA1") {
                    OtpAlgorithm::Sha1
                } else if value.eq_ignore_ascii_case("SHA256") {
                    OtpAlgorithm::Sha256
                } else if value.eq_ignore_ascii_case("SHA512") {
                    OtpAlgorithm::Sha512
                } else {
                    return Err(OtpUriError::InvalidAlgorithm);
                };
                set_once(&mut algorithm, a, "algorithm")?
            }
            "digits" => {
                let d = decimal::<u8>(&value)
                    .and_then(OtpDigits::new)
                    .ok_or(OtpUriError::InvalidDigits)?;
                set_once(&mut digits, d, "digits")?
            }
            "period" => {
                if !totp {
                    return Err(OtpUriError::ParameterNotForType { name: "period" });
                }
                let p = decimal::<u32>(&value)
                    .filter(|p| (1..=MAX_PERIOD_SECONDS).contains(p))
                    .ok_or(OtpUriError::InvalidPeriod)?;
                set_once(&mut period, p, "period")?
            }
            "counter" => {
                if totp {
                    return Err(OtpUriError::ParameterNotForType { name: "counter" });
                }
                let c = decimal::<u64>(&value).ok_or(OtpUriError::InvalidCounter)?;
                set_once(&mut counter, c, "counter")?
            }
            // Unknown parameters (`image`, `color`, …) are ignored.
            _ => {}
        }
    }

    let issuer = match (label_issuer, issuer) {
        (Some(l), Some(p)) if l != p => return Err(OtpUriError::IssuerMismatch),
        (Some(l), _) => Some(l.to_string()),
        (None, p) => p,
    };
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(OtpUriError::MissingSecret)?;
    let mut bytes = decode_base32(&secret).ok_or(OtpUriError::InvalidSecret)?;
    let seed = OtpSeed::new(std::mem::take(&mut *bytes))?;
    let kind = if totp {
        OtpKind::Totp {
            period: period.unwrap_or(30),
        }
    } else {
        OtpKind::Hotp {
            counter: counter.ok_or(OtpUriError::MissingCounter)?,
        }
    };
    Ok(OtpKey {
        issuer,
        account_name: account_name.to_string(),
        algorithm: algorithm.unwrap_or(OtpAlgorithm::Sha1),
        digits: digits.unwrap_or(OtpDigits::SIX),
        kind,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(ascii: &str) -> OtpSeed {
        OtpSeed::new(ascii.as_bytes().to_vec()).unwrap()
    }

    const RFC_SEED_SHA1: &str = "12345678901234567890";
    const RFC_SEED_SHA256: &str = "12345678901234567890123456789012";
    const RFC_SEED_SHA512: &str =
        "1234567890123456789012345678901234567890123456789012345678901234";

    /// RFC 4226 Appendix D: HOTP values for counters 0 to 9 (SHA-1, 6 digits).
    #[test]
    fn rfc4226_appendix_d_hotp_vectors() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        let s = seed(RFC_SEED_SHA1);
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(
                hotp(&s, OtpAlgorithm::Sha1, OtpDigits::SIX, counter as u64).unwrap(),
                *code,
                "counter {counter}"
            );
        }
    }

    /// RFC 6238 Appendix B: TOTP values (8 digits, 30-second period) for SHA-1, SHA-256 and
    /// SHA-512 at the listed times.
    #[test]
    fn rfc6238_appendix_b_totp_vectors() {
        let table: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        let eight = OtpDigits::new(8).unwrap();
        for (time, sha1, sha256, sha512) in table {
            for (algorithm, s, code) in [
                (OtpAlgorithm::Sha1, RFC_SEED_SHA1, sha1),
                (OtpAlgorithm::Sha256, RFC_SEED_SHA256, sha256),
                (OtpAlgorithm::Sha512, RFC_SEED_SHA512, sha512),
            ] {
                let otp = totp(&seed(s), algorithm, eight, 30, time).unwrap();
                assert_eq!(otp.code, code, "{algorithm:?} at {time}");
            }
        }
    }

    #[test]
    fn totp_reports_the_seconds_left_and_clamps_times_before_1970() {
        let s = seed(RFC_SEED_SHA1);
        let at = |t| totp(&s, OtpAlgorithm::Sha1, OtpDigits::SIX, 30, t).unwrap();
        assert_eq!(at(59).valid_for, Some(Duration::from_secs(1)));
        assert_eq!(at(60).valid_for, Some(Duration::from_secs(30)));
        assert_eq!(at(61).valid_for, Some(Duration::from_secs(29)));
        assert_eq!(at(-5), at(0));
        assert_eq!(at(0).code, "755224"); // T = 0 is HOTP counter 0.
        assert!(totp(&s, OtpAlgorithm::Sha1, OtpDigits::SIX, 0, 0).is_err());
        let seven = OtpDigits::new(7).unwrap();
        assert_eq!(hotp(&s, OtpAlgorithm::Sha1, seven, 0).unwrap().len(), 7);
    }

    /// RFC 4648 section 10, plus case, padding and canonical-encoding rules.
    #[test]
    fn base32_is_decoded_strictly() {
        for (text, plain) in [
            ("", ""),
            ("MY======", "f"),
            ("MZXQ====", "fo"),
            ("MZXW6===", "foo"),
            ("MZXW6YQ=", "foob"),
            ("MZXW6YTB", "fooba"),
            ("MZXW6YTBOI======", "foobar"),
            ("MZXW6YTBOI", "foobar"),
            ("MZXW6YQ", "foob"),
            ("mzxw6ytboi", "foobar"),
        ] {
            assert_eq!(
                decode_base32(text).map(|b| b.to_vec()),
                Some(plain.as_bytes().to_vec()),
                "{text}"
            );
        }
        for bad in [
            "M",
            "MZX",
            "MZXW6Y",
            "MZXW6YTBO", // impossible lengths
            "MZ======",
            "MZXR====", // non-zero trailing bits
            "MZXW6YTB=",
            "MZXW6YQ==",
            "MZXW6Y==", // wrong padding
            "MZXW 6YTB",
            "MZXW6YT1",
            "MZXW6YT8",
            "MZXW-6YTB",
            "MZ=XW6YT",
        ] {
            assert!(decode_base32(bad).is_none(), "{bad}");
        }
    }

    const SECRET_160: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"

    #[test]
    fn good_uris_parse() {
        let key = OtpKey::from_uri(&format!(
            "otpauth://totp/Example%20Co:alice%40example.com?secret={SECRET_160}&issuer=Example%20Co&algorithm=SHA256&digits=8&period=60"
        ))
        .unwrap();
        assert_eq!(key.issuer.as_deref(), Some("Example Co"));
        assert_eq!(key.account_name, "alice@example.com");
        assert_eq!(key.algorithm, OtpAlgorithm::Sha256);
        assert_eq!(key.digits.get(), 8);
        assert_eq!(key.kind, OtpKind::Totp { period: 60 });
        assert_eq!(key.seed.expose(), RFC_SEED_SHA1.as_bytes());
        assert!(!key.short_secret());

        // Defaults; no issuer at all; `+` as a space in the query; `%3A` and a space after the
        // colon in the label; lowercase secret and algorithm; unknown parameters ignored.
        let key = OtpKey::from_uri(&format!("otpauth://totp/alice?secret={SECRET_160}")).unwrap();
        assert_eq!(key.issuer, None);
        assert_eq!(key.algorithm, OtpAlgorithm::Sha1);
        assert_eq!(key.digits, OtpDigits::SIX);
        assert_eq!(key.kind, OtpKind::Totp { period: 30 });
        let key = OtpKey::from_uri(&format!(
            "OTPAUTH://TOTP/Big%20Bank%3A%20John%20Doe?secret={}&issuer=Big+Bank&algorithm=sha512&image=https%3A%2F%2Fx",
            SECRET_160.to_lowercase()
        ))
        .unwrap();
        assert_eq!(key.issuer.as_deref(), Some("Big Bank"));
        assert_eq!(key.account_name, "John Doe");
        assert_eq!(key.algorithm, OtpAlgorithm::Sha512);
        // Issuer only as a parameter.
        let key = OtpKey::from_uri(&format!(
            "otpauth://totp/bob?issuer=ACME&secret={SECRET_160}"
        ))
        .unwrap();
        assert_eq!(key.issuer.as_deref(), Some("ACME"));

        let key = OtpKey::from_uri(&format!(
            "otpauth://hotp/Example:alice?secret={SECRET_160}&issuer=Example&counter=42&digits=7"
        ))
        .unwrap();
        assert_eq!(key.kind, OtpKind::Hotp { counter: 42 });
        assert_eq!(key.digits.get(), 7);

        // 80-bit secrets (16 base32 characters) are accepted and flagged.
        let key = OtpKey::from_uri("otpauth://totp/Example:alice?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(key.seed.bits(), 80);
        assert!(key.short_secret());
    }

    #[test]
    fn malformed_uris_are_refused_with_their_reason() {
        use OtpUriError as E;
        let s = SECRET_160;
        let cases: Vec<(String, OtpUriError)> = vec![
            (format!("https://totp/a?secret={s}"), E::NotOtpauth),
            (format!("otpauth:/totp/a?secret={s}"), E::NotOtpauth),
            ("otp".into(), E::NotOtpauth),
            (format!("otpauth://motp/a?secret={s}"), E::UnknownType),
            (format!("otpauth://totp?secret={s}"), E::Malformed),
            (format!("otpauth://totp/a?secret={s}#x"), E::Malformed),
            (format!("otpauth://totp/a%zz?secret={s}"), E::Malformed),
            (format!("otpauth://totp/a%ff?secret={s}"), E::Malformed),
            (
                format!("otpauth://totp/a?secret={s}&issuer=%4"),
                E::Malformed,
            ),
            (format!("otpauth://totp/?secret={s}"), E::InvalidLabel),
            (
                format!("otpauth://totp/Issuer:?secret={s}"),
                E::InvalidLabel,
            ),
            (format!("otpauth://totp/:alice?secret={s}"), E::InvalidLabel),
            (format!("otpauth://totp/a:b:c?secret={s}"), E::InvalidLabel),
            (format!("otpauth://totp/a%0Ab?secret={s}"), E::InvalidLabel),
            (
                format!("otpauth://totp/{}?secret={s}", "a".repeat(257)),
                E::InvalidLabel,
            ),
            (
                format!("otpauth://totp/a?secret={s}&issuer="),
                E::InvalidIssuer,
            ),
            (
                format!("otpauth://totp/a?secret={s}&issuer=x%3Ay"),
                E::InvalidIssuer,
            ),
            (
                format!("otpauth://totp/Foo:a?secret={s}&issuer=Bar"),
                E::IssuerMismatch,
            ),
            ("otpauth://totp/a".into(), E::MissingSecret),
            ("otpauth://totp/a?secret=".into(), E::MissingSecret),
            (
                "otpauth://totp/a?secret=JBSWY3DPEHPK3PX1".into(),
                E::InvalidSecret,
            ),
            (
                "otpauth://totp/a?secret=JBSW%20Y3DP".into(),
                E::InvalidSecret,
            ),
            (
                "otpauth://totp/a?secret=GEZDGNBVGY3TQOI=".into(),
                E::SecretTooShort { bits: 72 },
            ),
            (
                format!("otpauth://totp/a?secret={}", "A".repeat(208)),
                E::SecretTooLong { bits: 1040 },
            ),
            (
                format!("otpauth://totp/a?secret={s}&digits=5"),
                E::InvalidDigits,
            ),
            (
                format!("otpauth://totp/a?secret={s}&digits=9"),
                E::InvalidDigits,
            ),
            (
                format!("otpauth://totp/a?secret={s}&digits=+6"),
                E::InvalidDigits,
            ),
            (
                format!("otpauth://totp/a?secret={s}&digits="),
                E::InvalidDigits,
            ),
            (
                format!("otpauth://totp/a?secret={s}&period=0"),
                E::InvalidPeriod,
            ),
            (
                format!("otpauth://totp/a?secret={s}&period=3601"),
                E::InvalidPeriod,
            ),
            (
                format!("otpauth://totp/a?secret={s}&period=-30"),
                E::InvalidPeriod,
            ),
            (
                format!("otpauth://totp/a?secret={s}&period=3x"),
                E::InvalidPeriod,
            ),
            (
                format!("otpauth://totp/a?secret={s}&algorithm=MD5"),
                E::InvalidAlgorithm,
            ),
            (
                format!("otpauth://totp/a?secret={s}&algorithm=SHA-1"),
                E::InvalidAlgorithm,
            ),
            (format!("otpauth://hotp/a?secret={s}"), E::MissingCounter),
            (
                format!("otpauth://hotp/a?secret={s}&counter=x"),
                E::InvalidCounter,
            ),
            (
                format!("otpauth://hotp/a?secret={s}&counter=18446744073709551616"),
                E::InvalidCounter,
            ),
            (
                format!("otpauth://totp/a?secret={s}&secret={s}"),
                E::DuplicateParameter { name: "secret" },
            ),
            (
                format!("otpauth://totp/a?secret={s}&digits=6&digits=6"),
                E::DuplicateParameter { name: "digits" },
            ),
            (
                format!("otpauth://totp/a?secret={s}&issuer=A&issuer=A"),
                E::DuplicateParameter { name: "issuer" },
            ),
            (
                format!("otpauth://totp/a?secret={s}&period=30&period=60"),
                E::DuplicateParameter { name: "period" },
            ),
            (
                format!("otpauth://totp/a?secret={s}&algorithm=SHA1&algorithm=SHA1"),
                E::DuplicateParameter { name: "algorithm" },
            ),
            (
                format!("otpauth://hotp/a?secret={s}&counter=1&counter=1"),
                E::DuplicateParameter { name: "counter" },
            ),
            (
                format!("otpauth://totp/a?secret={s}&counter=1"),
                E::ParameterNotForType { name: "counter" },
            ),
            (
                format!("otpauth://hotp/a?secret={s}&counter=1&period=30"),
                E::ParameterNotForType { name: "period" },
            ),
        ];
        for (uri, expected) in cases {
            let err = OtpKey::from_uri(&uri).unwrap_err();
            assert_eq!(err, expected, "{uri}");
            // No error ever repeats the secret (or any part of the URI).
            let text = format!("{err} {err:?} {}", err.code());
            assert!(!text.contains(s) && !text.contains("JBSW"), "{text}");
        }
    }

    #[test]
    fn seeds_and_codes_never_show_in_debug() {
        let key =
            OtpKey::from_uri(&format!("otpauth://totp/Ex:alice?secret={SECRET_160}")).unwrap();
        let text = format!("{key:?} {:?}", key.seed);
        assert!(text.contains("redacted"));
        assert!(!text.contains(SECRET_160) && !text.contains("1234567890"));
        assert!(!text.contains(&format!("{:?}", RFC_SEED_SHA1.as_bytes())));
        let code = totp(&key.seed, key.algorithm, key.digits, 30, 59).unwrap();
        assert!(!format!("{code:?}").contains(&code.code));
        // The serialized seed (for the encrypted state only) round-trips.
        let json = serde_json::to_string(&key).unwrap();
        let back: OtpKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
    }

    #[test]
    fn account_ids_are_checked() {
        let id = OtpAccountId::generate();
        assert_eq!(id.as_str().parse::<OtpAccountId>().unwrap(), id);
        assert!("otp_123".parse::<OtpAccountId>().is_err());
        assert!(
            "enr_0123456789abcdef0123456789abcdef"
                .parse::<OtpAccountId>()
                .is_err()
        );
    }
}
