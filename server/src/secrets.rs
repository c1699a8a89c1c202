//! Secrets at rest: the data key that seals every secret column, and the key-encryption key
//! (KEK, the "master key") that wraps the data key.
//!
//! Each secret value is sealed with AES-256-GCM under a key derived from the database's data key,
//! with the table, the column and the row's id as associated data: a sealed value copied to
//! another row, column or table does not open. The data key itself is stored in the database
//! only wrapped by a [`KeyEncryptionKey`]; the shipped one is a 32-byte [`MasterKey`] read from a
//! file or an environment variable, and the trait lets a KMS supply it instead. Without a master
//! key the data key is stored unwrapped ([`UNPROTECTED_KEK_ID`]): the columns are still sealed,
//! but whoever reads the database can open them, and the server says so loudly when it starts.
//!
//! Nothing here ever puts key material or a secret into an error or a `Debug` output; key bytes
//! are zeroized when dropped.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of data keys and master keys, in bytes.
pub const KEY_LEN: usize = 32;

/// What a sealed value starts with (version 1: AES-256-GCM, 96-bit random nonce, base64url of
/// nonce, ciphertext and tag). Clear values of every secret column start otherwise (base64url
/// text, JSON, DER), which is how values written before sealing existed are recognised.
pub const SEALED_PREFIX: &str = "tsx1:";

/// What the stored KEK id of a data key kept without a master key is.
pub const UNPROTECTED_KEK_ID: &str = "none";

/// Associated data of a wrapped data key.
const WRAP_AAD: &[u8] = b"tessera data key v1";

/// Something about secrets at rest went wrong. No variant carries key material or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Production mode and no master key.
    #[error(
        "production mode needs a master key: give --master-key-file PATH, TESSERA_MASTER_KEY_FILE or TESSERA_MASTER_KEY"
    )]
    MasterKeyRequired,
    /// The database's data key is wrapped by a master key and none was given.
    #[error(
        "this database's secrets are protected by master key {kek_id}: give it with --master-key-file PATH (or TESSERA_MASTER_KEY_FILE / TESSERA_MASTER_KEY)"
    )]
    MasterKeyMissing {
        /// The id of the key that wraps the data key.
        kek_id: String,
    },
    /// The master key given does not unwrap the database's data key.
    #[error(
        "the master key given ({given}) does not open this database's data key, which master key {expected} protects"
    )]
    WrongMasterKey {
        /// The id of the key that wraps the data key.
        expected: String,
        /// The id of the key given.
        given: String,
    },
    /// The master key cannot be read or is not a key.
    #[error("the master key is unusable: {0}")]
    InvalidMasterKey(&'static str),
    /// A stored secret does not open under the data key (altered, or copied from another row).
    #[error("a stored secret does not open: {0}")]
    Undecryptable(&'static str),
    /// The key-encryption key (for instance a KMS) failed.
    #[error("the key-encryption key failed: {0}")]
    Kek(String),
    /// The system's random number generator failed.
    #[error("the random number generator failed")]
    Random,
}

/// A future returned by a [`KeyEncryptionKey`].
pub type KekFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SecretsError>> + Send + 'a>>;

/// A key-encryption key: wraps and unwraps the database's data key. The shipped implementation
/// is [`MasterKey`] (a key from a file or an environment variable); a KMS implements the same
/// three methods.
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// A stable, non-secret name of this key, stored beside the wrapped data key so an operator
    /// (and the error of a wrong key) can tell which key a database needs.
    fn id(&self) -> String;

    /// Wraps (encrypts and authenticates) a data key.
    fn wrap<'a>(&'a self, data_key: &'a [u8]) -> KekFuture<'a, Vec<u8>>;

    /// Unwraps a data key wrapped by [`KeyEncryptionKey::wrap`]; fails (never returns other
    /// bytes) when it was wrapped by another key or altered.
    fn unwrap<'a>(&'a self, wrapped: &'a [u8]) -> KekFuture<'a, Zeroizing<Vec<u8>>>;
}

/// A 32-byte master key held in memory (zeroized on drop): the shipped [`KeyEncryptionKey`].
/// Its text form is the standard base64 of the 32 bytes (`openssl rand -base64 32`, or
/// `tessera-server admin generate-master-key`).
pub struct MasterKey {
    key: LessSafeKey,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretsError::InvalidMasterKey(
                "a master key is 32 bytes, in base64",
            ));
        }
        let fingerprint = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"tessera master key id",
        );
        let id = format!("local:{}", hex::encode(&fingerprint.as_ref()[..8]));
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| SecretsError::InvalidMasterKey("not an AES-256 key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// The key from its text form (base64 of 32 bytes; surrounding white space ignored).
    pub fn from_base64(text: &str) -> Result<Self, SecretsError> {
        let bytes =
            Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
                SecretsError::InvalidMasterKey("a master key is 32 bytes, in base64")
            })?);
        Self::from_bytes(&bytes)
    }

    /// The key in the file at `path` (its text form). Warns when others than the owner may read
    /// the file.
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let meta = std::fs::metadata(path)
            .map_err(|_| SecretsError::InvalidMasterKey("the master key file cannot be read"))?;
        if meta.len() > 1024 {
            return Err(SecretsError::InvalidMasterKey(
                "the master key file is too large",
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the master key file may be read by others than its owner: chmod 600 it"
                );
            }
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|_| {
                SecretsError::InvalidMasterKey("the master key file cannot be read")
            })?);
        Self::from_base64(&text)
    }

    /// A new random key and its text form (to store; shown once).
    pub fn generate() -> Result<(Self, Zeroizing<String>), SecretsError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SecretsError::Random)?;
        let text = Zeroizing::new(STANDARD.encode(bytes.as_ref()));
        Ok((Self::from_bytes(bytes.as_ref())?, text))
    }
}

impl KeyEncryptionKey for MasterKey {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn wrap<'a>(&'a self, data_key: &'a [u8]) -> KekFuture<'a, Vec<u8>> {
        Box::pin(async move { seal_bytes(&self.key, WRAP_AAD, data_key) })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a [u8]) -> KekFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(async move {
            open_bytes(&self.key, WRAP_AAD, wrapped)
                .ok_or(SecretsError::Undecryptable("the wrapped data key"))
        })
    }
}

/// Where a secret is stored: the associated data it is sealed with.
#[derive(Debug, Clone, Copy)]
pub struct SecretPlace<'a> {
    /// The table.
    pub table: &'static str,
    /// The column.
    pub column: &'static str,
    /// The row's id.
    pub row: &'a str,
}

impl SecretPlace<'_> {
    fn associated_data(&self) -> Vec<u8> {
        format!(
            "tessera secret v1\0{}\0{}\0{}",
            self.table, self.column, self.row
        )
        .into_bytes()
    }

    /// `table.column`, for errors.
    fn name(&self) -> &'static str {
        match (self.table, self.column) {
            ("enrollments", "otp_seed") => "enrollments.otp_seed",
            ("otp_tokens", "seed") => "otp_tokens.seed",
            ("server_keys", "private_key") => "server_keys.private_key",
            ("oidc_signing_keys", "private_key") => "oidc_signing_keys.private_key",
            ("applications", "push_fcm") => "applications.push_fcm",
            ("applications", "push_apns") => "applications.push_apns",
            ("ciba_requests", "client_notification_token") => {
                "ciba_requests.client_notification_token"
            }
            ("qr_sessions", "token") => "qr_sessions.token",
            ("flow_browser_tokens", "token") => "flow_browser_tokens.token",
            _ => "a secret column",
        }
    }
}

/// The database's data key: seals and opens secret columns, and computes keyed digests of
/// short secrets (codes a user types) that an offline guesser cannot check without the key.
pub struct DataKey {
    raw: Zeroizing<[u8; KEY_LEN]>,
    sealing: LessSafeKey,
    digests: hmac::Key,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> Result<Self, SecretsError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(raw.as_mut())
            .map_err(|_| SecretsError::Random)?;
        Self::from_bytes(raw.as_ref())
    }

    /// The data key from its bytes (as unwrapped).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsError> {
        let raw: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SecretsError::Undecryptable("the data key has the wrong length"))?;
        let raw = Zeroizing::new(raw);
        let root = hmac::Key::new(hmac::HMAC_SHA256, raw.as_ref());
        let sealing_key = Zeroizing::new(
            hmac::sign(&root, b"tessera column sealing v1")
                .as_ref()
                .to_vec(),
        );
        let digest_key = Zeroizing::new(
            hmac::sign(&root, b"tessera keyed digests v1")
                .as_ref()
                .to_vec(),
        );
        let sealing = UnboundKey::new(&AES_256_GCM, &sealing_key)
            .map_err(|_| SecretsError::Undecryptable("the data key"))?;
        Ok(Self {
            raw,
            sealing: LessSafeKey::new(sealing),
            digests: hmac::Key::new(hmac::HMAC_SHA256, &digest_key),
        })
    }

    /// The key's bytes, to wrap.
    pub fn bytes(&self) -> &[u8] {
        self.raw.as_ref()
    }

    /// Seals `plaintext` for `place`: [`SEALED_PREFIX`] and base64url text.
    pub fn seal(&self, place: SecretPlace<'_>, plaintext: &[u8]) -> Result<String, SecretsError> {
        let sealed = seal_bytes(&self.sealing, &place.associated_data(), plaintext)?;
        Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// Opens a value sealed for `place`. Fails for a value sealed for another place, altered, or
    /// not sealed at all.
    pub fn open(
        &self,
        place: SecretPlace<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let undecryptable = || SecretsError::Undecryptable(place.name());
        let body = sealed
            .strip_prefix(SEALED_PREFIX.as_bytes())
            .ok_or_else(undecryptable)?;
        let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| undecryptable())?);
        open_bytes(&self.sealing, &place.associated_data(), &bytes).ok_or_else(undecryptable)
    }

    /// [`DataKey::open`] for a value that is UTF-8 text.
    pub fn open_text(
        &self,
        place: SecretPlace<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<String>, SecretsError> {
        let bytes = self.open(place, sealed)?;
        std::str::from_utf8(&bytes)
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|_| SecretsError::Undecryptable(place.name()))
    }

    /// A keyed digest (HMAC-SHA-256, hex) of `parts` for `purpose`: each part is length-prefixed,
    /// so no two different lists give the same input.
    pub fn keyed_digest(&self, purpose: &str, parts: &[&[u8]]) -> String {
        let mut context = hmac::Context::with_key(&self.digests);
        for part in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        hex::encode(context.sign().as_ref())
    }
}

/// Whether a stored value is sealed (rather than clear text written before sealing existed).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(SEALED_PREFIX.as_bytes())
}

fn seal_bytes(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SecretsError::Random)?;
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *buffer,
    )
    .map_err(|_| SecretsError::Undecryptable("sealing failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + buffer.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buffer);
    Ok(out)
}

fn open_bytes(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buffer)
        .ok()?
        .len();
    buffer.truncate(len);
    Some(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(row: &str) -> SecretPlace<'_> {
        SecretPlace {
            table: "enrollments",
            column: "otp_seed",
            row,
        }
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_own_place() {
        let key = DataKey::generate().expect("key");
        let sealed = key.seal(place("enr_a"), b"seed bytes").expect("seal");
        assert!(is_sealed(sealed.as_bytes()));
        assert!(!sealed.contains("seed"));
        assert_eq!(
            key.open(place("enr_a"), sealed.as_bytes())
                .expect("open")
                .as_slice(),
            b"seed bytes"
        );
        assert!(matches!(
            key.open(place("enr_b"), sealed.as_bytes()),
            Err(SecretsError::Undecryptable("enrollments.otp_seed"))
        ));
        let other_column = SecretPlace {
            table: "otp_tokens",
            column: "seed",
            row: "enr_a",
        };
        assert!(key.open(other_column, sealed.as_bytes()).is_err());
        let other_key = DataKey::generate().expect("key");
        assert!(other_key.open(place("enr_a"), sealed.as_bytes()).is_err());
        assert!(key.open(place("enr_a"), b"clear text").is_err());
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(key.open(place("enr_a"), &altered).is_err());
    }

    #[tokio::test]
    async fn a_master_key_unwraps_only_what_it_wrapped() {
        let (master, text) = MasterKey::generate().expect("master");
        let again = MasterKey::from_base64(&format!("  {}\n", text.as_str())).expect("parse");
        assert_eq!(master.id(), again.id());
        let data = DataKey::generate().expect("data");
        let wrapped = master.wrap(data.bytes()).await.expect("wrap");
        assert_eq!(
            again.unwrap(&wrapped).await.expect("unwrap").as_slice(),
            data.bytes()
        );
        let (other, _) = MasterKey::generate().expect("other");
        assert_ne!(other.id(), master.id());
        assert!(other.unwrap(&wrapped).await.is_err());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(!format!("{master:?}").contains(text.as_str()));
    }

    #[test]
    fn keyed_digests_depend_on_key_purpose_and_every_part() {
        let key = DataKey::generate().expect("key");
        let a = key.keyed_digest("ciba user code", &[b"app", b"alice", b"1234"]);
        assert_eq!(
            a,
            key.keyed_digest("ciba user code", &[b"app", b"alice", b"1234"])
        );
        assert_ne!(
            a,
            key.keyed_digest("ciba user code", &[b"app", b"alice1", b"234"])
        );
        assert_ne!(a, key.keyed_digest("other", &[b"app", b"alice", b"1234"]));
        let other = DataKey::generate().expect("key");
        assert_ne!(
            a,
            other.keyed_digest("ciba user code", &[b"app", b"alice", b"1234"])
        );
    }
}
