//! Following the server's key rotations from the keys a device pinned.
//!
//! The server announces every change of its published keys (a rotation, the end of a rotation's
//! grace period, a revocation) as a new [`ServerKeySet`] with the next `sequence`, signed **once**
//! by a key of the set before it, and keeps publishing those signed sets, oldest first, as the
//! `key_set_chain` of `GET /v1/server-keys`. A device that pinned set *n* walks the chain with
//! [`advance`]: each later set is accepted only if a key the device trusts at that point signed
//! it, and then becomes what it trusts. A device offline through any number of rotations thereby
//! catches up, as long as the server still publishes the sets in between.
//!
//! A revoked key (`revoked`, cumulative) is never trusted again: it cannot sign a set, a set it
//! signed earlier in the chain does not count (the chain is refused, the device has to pair
//! again), and it is dropped from the pins.
//!
//! Sets whose signer the device does not trust *yet* are skipped (a device that paired after
//! them never pinned their signer); but the walk must end at the newest set of the chain, signed
//! by a key it reached, or it is refused as a whole.

use std::collections::BTreeSet;

use crate::envelope::{self, EnvelopeError, MessageType};
use crate::jwk::JwkSet;
use crate::pairing::{ServerKeySet, ServerUrl};

/// The response header of device-authenticated calls that carries the `sequence` of the
/// server's current key set: a device whose pinned set is older fetches `GET /v1/server-keys`
/// and [`advance`]s. Only a hint: nothing is trusted because of it.
pub const KEY_SET_SEQUENCE_HEADER: &str = "tessera-key-set-sequence";

/// The longest chain [`advance`] walks.
pub const MAX_CHAIN_LENGTH: usize = 64;

/// `serde` helper: a set from before numbering has sequence 0.
pub fn is_unnumbered(sequence: &u64) -> bool {
    *sequence == 0
}

/// The keys a device trusts for one server: the set it pinned and how far along the chain it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys {
    /// The keys that may sign for the server.
    pub keys: JwkSet,
    /// The `sequence` of the set they come from (0: pinned at pairing, position unknown).
    pub sequence: u64,
    /// Key ids never to be trusted again.
    pub revoked: Vec<String>,
}

/// Why a chain of key sets was refused. Nothing of it is accepted then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyChainError {
    /// The chain is empty or longer than [`MAX_CHAIN_LENGTH`].
    #[error("the key set chain is empty or too long")]
    BadLength,
    /// A set is not a well-formed signed key set, or its signature does not verify.
    #[error("a key set in the chain is invalid: {0}")]
    Invalid(EnvelopeError),
    /// A set names another server.
    #[error("a key set in the chain was issued by another server")]
    WrongIssuer,
    /// The sets are not in strictly increasing `sequence` order.
    #[error("the key sets are out of order")]
    OutOfOrder,
    /// A set was signed by a key that is revoked.
    #[error("a key set in the chain is signed by a revoked key")]
    SignedByRevokedKey,
    /// The newest set is not signed by any key the device trusts or reached.
    #[error("the newest key set is not signed by a trusted key")]
    Untrusted,
}

/// Walks `chain` (signed [`ServerKeySet`]s, oldest first) from `trusted` and returns what the
/// device trusts afterwards: unchanged if the chain holds nothing newer.
pub fn advance(
    trusted: &TrustedKeys,
    issuer: &ServerUrl,
    chain: &[String],
) -> Result<TrustedKeys, KeyChainError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN_LENGTH {
        return Err(KeyChainError::BadLength);
    }
    let mut current = trusted.clone();
    let mut revoked: BTreeSet<String> = trusted.revoked.iter().cloned().collect();
    let mut signers: Vec<String> = Vec::new();
    let mut last_sequence = 0u64;
    let mut newest_accepted = false;
    for (index, jws) in chain.iter().enumerate() {
        let claimed: ServerKeySet =
            envelope::unverified_payload(jws).map_err(KeyChainError::Invalid)?;
        if claimed.sequence <= last_sequence {
            return Err(KeyChainError::OutOfOrder);
        }
        last_sequence = claimed.sequence;
        let is_newest = index + 1 == chain.len();
        if claimed.sequence <= current.sequence {
            // Already known (or older): nothing to learn from it.
            newest_accepted = is_newest;
            continue;
        }
        let kid = envelope::inspect(jws).map_err(KeyChainError::Invalid)?.kid;
        if revoked.contains(&kid) {
            return Err(KeyChainError::SignedByRevokedKey);
        }
        let Some(key) = current.keys.find(&kid) else {
            // Not signed by a key trusted at this point: skipped, never believed.
            continue;
        };
        let set = envelope::verify::<ServerKeySet>(jws, MessageType::ServerKeySet, key)
            .map_err(KeyChainError::Invalid)?
            .payload;
        if &set.issuer != issuer {
            return Err(KeyChainError::WrongIssuer);
        }
        revoked.extend(set.revoked.iter().cloned());
        signers.push(kid);
        if signers.iter().any(|s| revoked.contains(s)) {
            return Err(KeyChainError::SignedByRevokedKey);
        }
        current = TrustedKeys {
            keys: JwkSet {
                keys: set
                    .keys
                    .keys
                    .into_iter()
                    .filter(|k| k.kid().is_none_or(|kid| !revoked.contains(kid)))
                    .collect(),
            },
            sequence: set.sequence,
            revoked: revoked.iter().cloned().collect(),
        };
        newest_accepted = is_newest;
    }
    if !newest_accepted {
        return Err(KeyChainError::Untrusted);
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::SoftwareSigningKey;

    fn issuer() -> ServerUrl {
        ServerUrl::parse("https://auth.example.com").unwrap()
    }

    fn set_of(keys: &[&SoftwareSigningKey]) -> JwkSet {
        JwkSet {
            keys: keys.iter().map(|k| k.public_jwk()).collect(),
        }
    }

    fn statement(
        sequence: u64,
        keys: &[&SoftwareSigningKey],
        revoked: &[&SoftwareSigningKey],
        signer: &SoftwareSigningKey,
    ) -> String {
        envelope::sign(
            MessageType::ServerKeySet,
            &ServerKeySet {
                v: 1,
                issuer: issuer(),
                keys: set_of(keys),
                issued_at: 1_767_225_600 + i64::try_from(sequence).unwrap(),
                sequence,
                revoked: revoked.iter().map(|k| k.kid().to_string()).collect(),
            },
            signer,
        )
        .unwrap()
    }

    fn pinned(keys: &[&SoftwareSigningKey], sequence: u64) -> TrustedKeys {
        TrustedKeys {
            keys: set_of(keys),
            sequence,
            revoked: Vec::new(),
        }
    }

    fn kids(t: &TrustedKeys) -> Vec<String> {
        t.keys
            .keys
            .iter()
            .map(|k| k.kid().unwrap().to_string())
            .collect()
    }

    #[test]
    fn two_rotations_are_followed_from_the_first_set() {
        let [k1, k2, k3] = [(); 3].map(|_| SoftwareSigningKey::generate());
        let chain = vec![
            statement(1, &[&k1], &[], &k1),
            statement(2, &[&k1, &k2], &[], &k1),
            statement(3, &[&k2], &[], &k2),
            statement(4, &[&k2, &k3], &[], &k2),
            statement(5, &[&k3], &[], &k3),
        ];
        let after = advance(&pinned(&[&k1], 1), &issuer(), &chain).unwrap();
        assert_eq!(after.sequence, 5);
        assert_eq!(kids(&after), vec![k3.kid().to_string()]);
        // Pinned at pairing (sequence unknown) with the second key: the first sets are skipped.
        let after = advance(&pinned(&[&k2], 0), &issuer(), &chain).unwrap();
        assert_eq!(after.sequence, 5);
        // Already current: unchanged.
        let current = pinned(&[&k3], 5);
        assert_eq!(advance(&current, &issuer(), &chain).unwrap(), current);
    }

    #[test]
    fn a_set_signed_by_an_unknown_key_is_refused() {
        let [k1, attacker] = [(); 2].map(|_| SoftwareSigningKey::generate());
        let chain = vec![
            statement(1, &[&k1], &[], &k1),
            statement(2, &[&attacker], &[], &attacker),
        ];
        assert_eq!(
            advance(&pinned(&[&k1], 1), &issuer(), &chain),
            Err(KeyChainError::Untrusted)
        );
        // Claiming to be signed by a pinned key does not help without its signature.
        let by_attacker = statement(2, &[&attacker], &[], &attacker);
        let by_k1 = statement(2, &[&attacker], &[], &k1);
        let (_, sig) = by_attacker.rsplit_once('.').unwrap();
        let (input, _) = by_k1.rsplit_once('.').unwrap();
        let spliced = format!("{input}.{sig}");
        assert!(matches!(
            advance(&pinned(&[&k1], 1), &issuer(), &[spliced]),
            Err(KeyChainError::Invalid(_))
        ));
    }

    #[test]
    fn a_revoked_key_cannot_introduce_a_key_nor_stay_a_link() {
        let [k1, k2, k3] = [(); 3].map(|_| SoftwareSigningKey::generate());
        // k1 is revoked by the set signed by k2.
        let revocation = statement(3, &[&k2], &[&k1], &k2);
        let online = advance(
            &pinned(&[&k1, &k2], 2),
            &issuer(),
            std::slice::from_ref(&revocation),
        )
        .unwrap();
        assert_eq!(kids(&online), vec![k2.kid().to_string()]);
        assert_eq!(online.revoked, vec![k1.kid().to_string()]);
        // k1 then signs a set introducing k3: refused.
        let by_revoked = statement(4, &[&k2, &k3], &[], &k1);
        assert_eq!(
            advance(&online, &issuer(), &[revocation.clone(), by_revoked]),
            Err(KeyChainError::SignedByRevokedKey)
        );
        // A device that only pinned k1 cannot come through a set k1 signed before revocation.
        let chain = vec![statement(2, &[&k1, &k2], &[], &k1), revocation];
        assert_eq!(
            advance(&pinned(&[&k1], 1), &issuer(), &chain),
            Err(KeyChainError::SignedByRevokedKey)
        );
    }

    #[test]
    fn order_issuer_and_length_are_checked() {
        let k1 = SoftwareSigningKey::generate();
        let chain = vec![
            statement(2, &[&k1], &[], &k1),
            statement(2, &[&k1], &[], &k1),
        ];
        assert_eq!(
            advance(&pinned(&[&k1], 1), &issuer(), &chain),
            Err(KeyChainError::OutOfOrder)
        );
        let elsewhere = ServerUrl::parse("https://other.example.com").unwrap();
        assert_eq!(
            advance(
                &pinned(&[&k1], 1),
                &elsewhere,
                &[statement(2, &[&k1], &[], &k1)]
            ),
            Err(KeyChainError::WrongIssuer)
        );
        assert_eq!(
            advance(&pinned(&[&k1], 1), &issuer(), &[]),
            Err(KeyChainError::BadLength)
        );
    }
}
