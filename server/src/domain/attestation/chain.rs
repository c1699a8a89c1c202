//! Certificate chains: decoding, signature checks up to a trusted root, revocation.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::AttestationError;

/// The longest chain accepted (Android chains have 3 to 5 certificates).
const MAX_CHAIN_LEN: usize = 8;
/// The largest certificate accepted, in bytes.
const MAX_CERT_BYTES: usize = 16 * 1024;

/// The DER of a PEM certificate.
pub(super) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    if parsed.label != "CERTIFICATE" {
        return None;
    }
    X509Certificate::from_der(&parsed.contents).ok()?;
    Some(parsed.contents)
}

/// Decodes a chain of standard-base64 DER certificates (leaf first).
pub(super) fn decode_base64_chain(chain: &[String]) -> Result<Vec<Vec<u8>>, AttestationError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN_LEN {
        return Err(AttestationError::Malformed(
            "a chain has no or too many certificates",
        ));
    }
    chain
        .iter()
        .map(|b64| {
            if b64.len() > MAX_CERT_BYTES * 4 / 3 + 4 {
                return Err(AttestationError::Malformed("a certificate is too large"));
            }
            STANDARD
                .decode(b64)
                .map_err(|_| AttestationError::Malformed("a certificate is not base64"))
        })
        .collect()
}

/// Parses DER certificates, each completely.
pub(super) fn parse_all(ders: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, AttestationError> {
    ders.iter()
        .map(|der| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            _ => Err(AttestationError::Malformed(
                "a certificate is not DER X.509",
            )),
        })
        .collect()
}

/// Checks that every certificate is signed by the next one and that the last is a trusted root
/// or signed by one (roots are matched by their public key, so a root re-issued with the same
/// key anchors the same chains), and that no certificate is revoked. Validity dates are not
/// enforced: attestation certificates carry dates that do not mean expiry (as Google advises).
pub(super) fn verify_to_roots(
    chain: &[X509Certificate<'_>],
    roots: &[Vec<u8>],
    revoked: &HashSet<String>,
) -> Result<(), AttestationError> {
    let Some(last) = chain.last() else {
        return Err(AttestationError::Malformed("an empty chain"));
    };
    for cert in chain {
        if !revoked.is_empty() && revoked.contains(&format!("{:x}", cert.tbs_certificate.serial)) {
            return Err(AttestationError::Revoked);
        }
    }
    for pair in chain.windows(2) {
        let [cert, issuer] = pair else {
            continue;
        };
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|_| AttestationError::BadSignature)?;
    }
    let roots = parse_all(roots).map_err(|_| AttestationError::UnknownRoot)?;
    let anchored = roots.iter().any(|root| {
        let same_key = root.public_key().raw == last.public_key().raw;
        let self_signed_ok = same_key && last.verify_signature(None).is_ok();
        self_signed_ok || last.verify_signature(Some(root.public_key())).is_ok()
    });
    if anchored {
        Ok(())
    } else {
        Err(AttestationError::UnknownRoot)
    }
}
