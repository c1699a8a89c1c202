//! OTP seeds provisioned at pairing. The device puts a fresh P-256 *transport key* (a software
//! key of that one pairing, never reused) in its registration; the server generates a 160-bit
//! seed for the new enrollment and puts it in the signed pairing reply, sealed to that key:
//! ECDH with an ephemeral server key, HKDF-SHA256 (salt: the enrollment id; info:
//! [`SEED_INFO`]), ChaCha20-Poly1305 with the enrollment id as associated data. A relaying
//! customer backend sees only the sealed seed; the device opens it and keeps it in its encrypted
//! state. Codes are TOTP (RFC 6238), SHA-1, 6 digits, 30-second period.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use p256::ecdh::diffie_hellman;
use p256::{PublicKey, SecretKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::ids::EnrollmentId;
use crate::jwk::PublicJwk;

/// HKDF `info` of the seed-sealing key.
pub const SEED_INFO: &[u8] = b"tessera otp seed v1";
/// Bytes of a provisioned seed (160 bits, RFC 4226's recommendation).
pub const SEED_BYTES: usize = 20;
/// Digits of provisioned codes.
pub const DIGITS: u32 = 6;
/// Period of provisioned codes, in seconds.
pub const PERIOD_SECONDS: u32 = 30;

/// The enrollment's OTP seed, sealed to the device's transport key (inside the signed
/// [`crate::pairing::PairingReply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionedOtp {
    /// `TOTP-SHA1`: the only scheme of this version.
    pub scheme: String,
    /// Digits per code.
    pub digits: u32,
    /// Period in seconds.
    pub period: u32,
    /// The server's ephemeral P-256 key.
    pub epk: PublicJwk,
    /// ChaCha20-Poly1305 nonce, base64url.
    pub nonce: String,
    /// The sealed seed, base64url.
    pub ciphertext: String,
}

/// Sealing or opening a seed failed. Carries nothing of the seed or the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A key is not a usable P-256 key.
    #[error("invalid key")]
    InvalidKey,
    /// The sealed seed is malformed, or was not sealed to this key for this enrollment.
    #[error("the sealed seed does not open")]
    DoesNotOpen,
    /// An unknown scheme or parameters.
    #[error("unsupported OTP scheme")]
    Unsupported,
}

fn cipher(shared: &[u8], enrollment: &EnrollmentId) -> Result<ChaCha20Poly1305, SealError> {
    let hk = Hkdf::<Sha256>::new(Some(enrollment.as_str().as_bytes()), shared);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(SEED_INFO, key.as_mut())
        .map_err(|_| SealError::InvalidKey)?;
    Ok(ChaCha20Poly1305::new(&(*key).into()))
}

/// A fresh random seed.
pub fn new_seed() -> Zeroizing<Vec<u8>> {
    let mut seed = Zeroizing::new(vec![0u8; SEED_BYTES]);
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

/// Seals `seed` to the device's transport key for `enrollment` (the server's side).
pub fn seal(
    seed: &[u8],
    device_transport_key: &PublicJwk,
    enrollment: &EnrollmentId,
) -> Result<ProvisionedOtp, SealError> {
    let device = PublicKey::from(*device_transport_key.verifying_key());
    let ephemeral = SecretKey::random(&mut rand::rngs::OsRng);
    let shared = diffie_hellman(ephemeral.to_nonzero_scalar(), device.as_affine());
    let cipher = cipher(shared.raw_secret_bytes(), enrollment)?;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: seed,
                aad: enrollment.as_str().as_bytes(),
            },
        )
        .map_err(|_| SealError::InvalidKey)?;
    let epk =
        PublicJwk::from_verifying_key(&p256::ecdsa::VerifyingKey::from(ephemeral.public_key()));
    Ok(ProvisionedOtp {
        scheme: "TOTP-SHA1".into(),
        digits: DIGITS,
        period: PERIOD_SECONDS,
        epk,
        nonce: URL_SAFE_NO_PAD.encode(nonce),
        ciphertext: URL_SAFE_NO_PAD.encode(ciphertext),
    })
}

/// Opens a sealed seed with the transport key's secret (the device's side).
pub fn open(
    sealed: &ProvisionedOtp,
    transport_secret: &SecretKey,
    enrollment: &EnrollmentId,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.scheme != "TOTP-SHA1" || !(6..=8).contains(&sealed.digits) || sealed.period == 0 {
        return Err(SealError::Unsupported);
    }
    let server = PublicKey::from(*sealed.epk.verifying_key());
    let shared = diffie_hellman(transport_secret.to_nonzero_scalar(), server.as_affine());
    let cipher = cipher(shared.raw_secret_bytes(), enrollment)?;
    let nonce = URL_SAFE_NO_PAD
        .decode(&sealed.nonce)
        .map_err(|_| SealError::DoesNotOpen)?;
    let ciphertext = URL_SAFE_NO_PAD
        .decode(&sealed.ciphertext)
        .map_err(|_| SealError::DoesNotOpen)?;
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| SealError::DoesNotOpen)?;
    let seed = cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &ciphertext,
                aad: enrollment.as_str().as_bytes(),
            },
        )
        .map_err(|_| SealError::DoesNotOpen)?;
    Ok(Zeroizing::new(seed))
}

/// The HMAC hash function of an OTP seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpHash {
    /// HMAC-SHA-1 (RFC 4226, and provisioned seeds).
    Sha1,
    /// HMAC-SHA-256 (RFC 6238).
    Sha256,
    /// HMAC-SHA-512 (RFC 6238).
    Sha512,
}

/// The HOTP value (RFC 4226 section 5.3) of `seed` at `counter`: HMAC, dynamic truncation,
/// modulo 10^digits, zero-padded. TOTP (RFC 6238) is this at counter `unix time / period`. The
/// device core and the server both compute codes with it.
pub fn hotp(
    seed: &[u8],
    hash: OtpHash,
    digits: u32,
    counter: u64,
) -> Result<Zeroizing<String>, SealError> {
    if !(6..=8).contains(&digits) {
        return Err(SealError::Unsupported);
    }
    let message = counter.to_be_bytes();
    let mac = match hash {
        OtpHash::Sha1 => hmac_of::<hmac::Hmac<sha1::Sha1>>(seed, &message),
        OtpHash::Sha256 => hmac_of::<hmac::Hmac<Sha256>>(seed, &message),
        OtpHash::Sha512 => hmac_of::<hmac::Hmac<sha2::Sha512>>(seed, &message),
    }?;
    let value = dynamic_truncation(&mac)?;
    Ok(Zeroizing::new(format!(
        "{:0width$}",
        value % 10u32.pow(digits),
        width = digits as usize
    )))
}

fn hmac_of<M: hmac::Mac + hmac::digest::KeyInit>(
    key: &[u8],
    message: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    // HMAC takes keys of any length, so this never fails in practice.
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).map_err(|_| SealError::InvalidKey)?;
    mac.update(message);
    Ok(Zeroizing::new(mac.finalize().into_bytes().to_vec()))
}

/// RFC 4226 section 5.3: a 31-bit number from four bytes at the offset the last nibble names.
fn dynamic_truncation(mac: &[u8]) -> Result<u32, SealError> {
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let bytes: [u8; 4] = mac
        .get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or(SealError::InvalidKey)?;
    Ok(u32::from_be_bytes(bytes) & 0x7fff_ffff)
}

/// RFC 4648 base32 (either letter case, optional complete padding, zero trailing bits): how
/// `otpauth://` URIs and OATH token registrations carry seeds. `None` if not canonical base32.
pub fn decode_base32(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let data = text.trim_end_matches('=');
    let padded = data.len() != text.len();
    if !matches!(data.len() % 8, 0 | 2 | 4 | 5 | 7) {
        return None;
    }
    if padded && (!text.len().is_multiple_of(8) || data.len().is_multiple_of(8)) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(data.len() * 5 / 8));
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for c in data.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // Bits left over must be zero padding (a canonical encoding).
    (buffer == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn totp_matches_rfc_6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1, seed "12345678901234567890", 8 digits.
        let seed = b"12345678901234567890";
        for (time, code) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(
                super::hotp(seed, super::OtpHash::Sha1, 8, time / 30)
                    .unwrap()
                    .as_str(),
                code
            );
        }
    }

    use super::*;

    #[test]
    fn sealed_seeds_open_only_with_the_key_and_the_enrollment() {
        let device = SecretKey::random(&mut rand::rngs::OsRng);
        let public =
            PublicJwk::from_verifying_key(&p256::ecdsa::VerifyingKey::from(device.public_key()));
        let enrollment = EnrollmentId::generate();
        let seed = new_seed();
        let sealed = seal(&seed, &public, &enrollment).unwrap();
        assert_eq!(
            open(&sealed, &device, &enrollment).unwrap().as_slice(),
            seed.as_slice()
        );
        // Another enrollment, another key, a flipped byte: nothing opens.
        assert_eq!(
            open(&sealed, &device, &EnrollmentId::generate()).unwrap_err(),
            SealError::DoesNotOpen
        );
        let other = SecretKey::random(&mut rand::rngs::OsRng);
        assert!(open(&sealed, &other, &enrollment).is_err());
        let mut tampered = sealed.clone();
        let mut bytes = URL_SAFE_NO_PAD.decode(&tampered.ciphertext).unwrap();
        bytes[0] ^= 1;
        tampered.ciphertext = URL_SAFE_NO_PAD.encode(bytes);
        assert!(open(&tampered, &device, &enrollment).is_err());
        // The sealed form never shows the seed.
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(seed.as_slice())));
    }
}
