//! What type a FIDO credential is, and which authentication methods (`amr`, RFC 8176) an
//! assertion with it earns. The rules:
//!
//! - The type is fixed at registration: a roaming authenticator is `SECURITY_KEY`; the
//!   device's own authenticator is `FIDO2_BIOMETRICS` when it verified the user, `PLATFORM`
//!   otherwise.
//! - `amr`: `hwk` for a key bound to hardware (not backup eligible), `swk` for one that may be
//!   synced (a passkey), `user` when this assertion verified the user. WebAuthn does not say
//!   whether a fingerprint or a face verified the user, so `fpt`/`face` are never claimed.

use tessera_protocol::fido::FidoCredentialType;
use webauthn_rs_core::proto::AuthenticatorAttachment;

/// The type of a new credential.
pub(crate) fn credential_type(
    attachment: AuthenticatorAttachment,
    user_verified: bool,
) -> FidoCredentialType {
    match attachment {
        AuthenticatorAttachment::CrossPlatform => FidoCredentialType::SecurityKey,
        AuthenticatorAttachment::Platform if user_verified => FidoCredentialType::Fido2Biometrics,
        AuthenticatorAttachment::Platform => FidoCredentialType::Platform,
    }
}

/// The `amr` of one assertion.
pub(crate) fn amr(backup_eligible: bool, user_verified: bool) -> Vec<&'static str> {
    let mut amr = vec![if backup_eligible { "swk" } else { "hwk" }];
    if user_verified {
        amr.push("user");
    }
    amr
}

/// Whether a counter seen in an assertion may follow the stored one: it must rise, unless the
/// authenticator keeps no counter at all (both zero).
pub(crate) fn counter_acceptable(stored: u32, seen: u32) -> bool {
    seen > stored || (seen == 0 && stored == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_attachment_and_user_verification() {
        use AuthenticatorAttachment::*;
        assert_eq!(
            credential_type(CrossPlatform, true),
            FidoCredentialType::SecurityKey
        );
        assert_eq!(
            credential_type(CrossPlatform, false),
            FidoCredentialType::SecurityKey
        );
        assert_eq!(
            credential_type(Platform, true),
            FidoCredentialType::Fido2Biometrics
        );
        assert_eq!(
            credential_type(Platform, false),
            FidoCredentialType::Platform
        );
    }

    #[test]
    fn amr_never_guesses_a_biometric() {
        assert_eq!(amr(false, false), vec!["hwk"]);
        assert_eq!(amr(false, true), vec!["hwk", "user"]);
        assert_eq!(amr(true, true), vec!["swk", "user"]);
        for v in [amr(false, true), amr(true, true)] {
            assert!(!v.contains(&"fpt") && !v.contains(&"face"));
        }
    }

    #[test]
    fn a_counter_must_rise_unless_the_authenticator_keeps_none() {
        assert!(counter_acceptable(4, 5));
        assert!(counter_acceptable(0, 0));
        assert!(!counter_acceptable(5, 5));
        assert!(!counter_acceptable(5, 3));
        assert!(!counter_acceptable(5, 0));
    }
}
