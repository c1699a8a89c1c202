//! Typed identifiers. Identifiers minted by the server are random (128 bits; an authentication's
//! id starts with its creation time, [`AuthenticationId::generate_ordered`]) and carry a short
//! prefix saying what they name, so one can never be passed where another is expected.

use rand::RngCore;
use serde::{Deserialize, Serialize};

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        crate::openapi_schema!(
            $name,
            string,
            "Identifier: a prefix and 32 lowercase hex digits",
            pattern = concat!("^", $prefix, "[0-9a-f]{32}$"),
            min_length = $prefix.len() + 32,
            max_length = $prefix.len() + 32
        );

        impl $name {
            /// The prefix every identifier of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random identifier (128 bits from the OS RNG).
            pub fn generate() -> Self {
                let mut bytes = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                Self(format!("{}{}", $prefix, hex_lower(&bytes)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = crate::ids::InvalidId;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                let rest = s.strip_prefix($prefix).ok_or(InvalidId(stringify!($name)))?;
                if rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId(stringify!($name)))
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::ids::InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string is not a well-formed identifier of the named kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct InvalidId(pub &'static str);

random_id!(
    /// An application (a customer's app) registered on the server.
    ApplicationId,
    "app_"
);
random_id!(
    /// One installation of an app embedding the SDK; the same device may hold enrollments for
    /// several users. Derived from the installation's device key ([`DeviceId::of_device_key`]);
    /// installations paired before device keys existed keep a random one until their next
    /// pairing.
    DeviceId,
    "dev_"
);
impl DeviceId {
    /// The device id of the installation whose device key is `key`: `dev_` and the first 128
    /// bits of the key's RFC 7638 thumbprint, in lowercase hex. A registration's `device_id` must
    /// be this id of the device key it proves (see [`crate::pairing::DeviceKeyProof`]), so a
    /// device id can be neither chosen nor claimed by another device.
    pub fn of_device_key(key: &crate::jwk::PublicJwk) -> DeviceId {
        let digest = key.thumbprint_digest();
        DeviceId(format!(
            "{}{}",
            Self::PREFIX,
            hex_lower(&digest.as_bytes()[..16])
        ))
    }
}

random_id!(
    /// One authentication: a question to a device and its answer.
    AuthenticationId,
    "aut_"
);
impl AuthenticationId {
    /// A fresh identifier that sorts after every identifier minted at an earlier millisecond:
    /// its first 12 hex digits are `unix_ms` (48 bits, big-endian; a negative time counts as
    /// zero) and the other 20 are random (80 bits from the OS RNG). The text is the same shape
    /// as [`AuthenticationId::generate`]'s.
    ///
    /// A store keeps its index of identifiers in order; random identifiers land on a random
    /// page of that index, ordered ones on its last page, which the requests committed
    /// together then share. An authentication id is not a credential (every read of one needs
    /// the application's API key or the device's signature), so 80 random bits are enough
    /// to keep two apart and to make one impossible to guess.
    pub fn generate_ordered(unix_ms: i64) -> Self {
        Self(format!("{}{}", Self::PREFIX, ordered_hex(unix_ms)))
    }
}

/// 12 lowercase hex digits of `unix_ms` (big-endian, clamped to 0..2^48; a negative time counts
/// as zero): identifiers that start with it sort by the millisecond they were minted in.
pub fn time_prefix(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms).unwrap_or(0).min((1 << 48) - 1);
    format!("{ms:012x}")
}

/// [`time_prefix`] then 20 random hex digits (80 bits from the OS RNG): 32 lowercase hex digits
/// whose order follows the time, for keys that should land on the last page of their index
/// ([`AuthenticationId::generate_ordered`], the server's policy decision ids).
pub fn ordered_hex(unix_ms: i64) -> String {
    let mut random = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut random);
    format!("{}{}", time_prefix(unix_ms), hex_lower(&random))
}
random_id!(
    /// One pairing of one device with one user of one application.
    EnrollmentId,
    "enr_"
);
random_id!(
    /// One authentication flow: the state machine a customer steps a user through.
    FlowId,
    "flw_"
);
random_id!(
    /// One QR login session: a code shown on a web page, scanned and answered by a device.
    QrSessionId,
    "qrs_"
);

/// A user, as the customer names them (their own user id: a login name, an email, a number).
///
/// 1 to 128 characters, no control characters, no leading or trailing whitespace. A new user's
/// id must also read as it renders ([`UserId::parse_new`]); the pattern in the OpenAPI schema is
/// what every operation accepts (ids stored before that rule included), the description says
/// what creating a user requires besides.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

crate::openapi_schema!(
    UserId,
    string,
    "The customer's id for a user: 1 to 128 characters, no control characters, no leading or trailing whitespace. Creating a user also refuses bidirectional embeddings, overrides, isolates and marks, and zero-width or other invisible characters (docs/protocol.md, \"Displayed text\")",
    pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$",
    min_length = 1,
    max_length = UserId::MAX_CHARS
);

impl UserId {
    /// Longest accepted user id, in characters.
    pub const MAX_CHARS: usize = 128;

    /// The user id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the id reads as it renders ([`crate::display::is_displayable`]): no
    /// bidirectional override, isolate or mark, no zero-width or other invisible character. A
    /// device shows user ids (the QR login's user picker, the user-verification prompt), so
    /// a new user's id must be displayable ([`UserId::parse_new`]).
    pub fn is_displayable(&self) -> bool {
        crate::display::is_displayable(&self.0)
    }

    /// Parses the id of a **new** user, as a caller offers it: the rules of parsing a [`UserId`]
    /// and, besides, [`UserId::is_displayable`].
    ///
    /// Parsing alone (`TryFrom`, `FromStr`, deserializing) keeps the earlier rules on purpose:
    /// ids accepted before this rule are stored in servers' databases, in devices' encrypted
    /// state and in signed messages, and must go on loading there (one such id must not make a
    /// user listing or a device's whole state unreadable). New ids are held to this rule where
    /// users are created, which is the only way an id enters the server.
    pub fn parse_new(s: &str) -> Result<Self, InvalidId> {
        let id = Self::try_from(s.to_string())?;
        if id.is_displayable() {
            Ok(id)
        } else {
            Err(InvalidId("UserId"))
        }
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let chars = s.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS || s.chars().any(char::is_control) || s.trim() != s
        {
            return Err(InvalidId("UserId"));
        }
        Ok(Self(s))
    }
}

impl std::str::FromStr for UserId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_string())
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_kinds_do_not_mix() {
        let d = DeviceId::generate();
        assert_eq!(d.as_str().len(), 4 + 32);
        assert_eq!(d.as_str().parse::<DeviceId>().unwrap(), d);
        assert!(d.as_str().parse::<EnrollmentId>().is_err());
        assert!("dev_XYZ".parse::<DeviceId>().is_err());
    }

    #[test]
    fn ordered_authentication_ids_sort_by_their_millisecond_and_differ_within_one() {
        let early = AuthenticationId::generate_ordered(1_764_000_000_000);
        let late = AuthenticationId::generate_ordered(1_764_000_000_001);
        let twin = AuthenticationId::generate_ordered(1_764_000_000_001);
        assert!(early < late && early < twin);
        assert_ne!(late, twin);
        assert_eq!(&late.as_str()[4..16], "019ab697e801");
        for id in [&early, &late] {
            assert_eq!(id.as_str().parse::<AuthenticationId>().unwrap(), *id);
        }
        // Out-of-range times clamp instead of overflowing the 12 digits.
        let before_1970 = AuthenticationId::generate_ordered(-5);
        assert_eq!(&before_1970.as_str()[4..16], "000000000000");
        let far = AuthenticationId::generate_ordered(i64::MAX);
        assert_eq!(&far.as_str()[4..16], "ffffffffffff");
        assert!(far.as_str().parse::<AuthenticationId>().is_ok());
    }

    #[test]
    fn a_device_id_is_the_truncated_thumbprint_of_its_device_key() {
        let key = crate::envelope::SoftwareSigningKey::generate().public_jwk();
        let id = DeviceId::of_device_key(&key);
        assert_eq!(
            id.as_str().parse::<DeviceId>().unwrap(),
            id,
            "a well-formed id"
        );
        assert_eq!(DeviceId::of_device_key(&key), id, "deterministic");
        let digest = key.thumbprint_digest();
        assert_eq!(String::from(digest), key.thumbprint());
        assert_eq!(&id.as_str()[4..], &hex_lower(&digest.as_bytes()[..16]));
        let other = crate::envelope::SoftwareSigningKey::generate().public_jwk();
        assert_ne!(DeviceId::of_device_key(&other), id);
    }

    #[test]
    fn user_ids_are_checked() {
        assert!("alice@example.com".parse::<UserId>().is_ok());
        assert!("".parse::<UserId>().is_err());
        assert!(" alice".parse::<UserId>().is_err());
        assert!("a\u{0}b".parse::<UserId>().is_err());
        assert!("x".repeat(129).parse::<UserId>().is_err());
        assert!("é".repeat(128).parse::<UserId>().is_ok());
    }

    #[test]
    fn new_user_ids_must_read_as_they_render() {
        for id in [
            "alice@example.com",
            "Müller-Lüdenscheidt",
            "张伟",
            "משה כהן",
            "محمد",
            "Ελένη",
            "user:42 👍",
        ] {
            let parsed = UserId::parse_new(id).expect(id);
            assert!(parsed.is_displayable(), "{id}");
            assert_eq!(parsed.as_str(), id);
        }
        for id in [
            "a\u{202E}b",
            "bob\u{2066}evil\u{2069}",
            "ali\u{200B}ce",
            "alice\u{E0041}",
            "x\u{00AD}y",
        ] {
            assert!(UserId::parse_new(id).is_err(), "{id:?}");
            // Stored ids from before the rule still load (a server's rows, a device's state,
            // signed messages): parsing alone keeps the old rules.
            let stored: UserId = id.parse().expect(id);
            assert!(!stored.is_displayable(), "{id:?}");
        }
        // The old rules hold for new ids too.
        assert!(UserId::parse_new("").is_err());
        assert!(UserId::parse_new(" alice").is_err());
        assert!(UserId::parse_new("a\u{0}b").is_err());
    }
}
