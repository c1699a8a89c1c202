//! ChaCha20-Poly1305 with a random nonce, as `nonce || ciphertext`: the one encryption the core
//! uses (state at rest, and the software key store's sealing).

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use rand::RngCore;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// Encryption or decryption failed (for decryption: tampered data, wrong key or wrong AAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadError;

/// Encrypts `plaintext` under `key`, binding `aad`.
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AeadError> {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| AeadError)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts what [`seal`] produced with the same key and `aad`.
pub(crate) fn open(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    if sealed.len() < NONCE_LEN {
        return Err(AeadError);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| AeadError)?;
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| AeadError)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_tamper_detection() {
        let key = [7u8; 32];
        let sealed = super::seal(&key, b"aad", b"hello").unwrap();
        assert_eq!(
            super::open(&key, b"aad", &sealed).unwrap().as_slice(),
            b"hello"
        );
        assert!(super::open(&key, b"other", &sealed).is_err());
        assert!(super::open(&[8u8; 32], b"aad", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[15] ^= 1;
        assert!(super::open(&key, b"aad", &bad).is_err());
        assert!(super::open(&key, b"aad", &sealed[..5]).is_err());
        assert_ne!(
            super::seal(&key, b"aad", b"hello").unwrap(),
            sealed,
            "fresh nonce"
        );
    }
}
