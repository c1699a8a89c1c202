//! Building a device registration and checking the server's pairing reply.
//!
//! Both are pure functions over the key store and the messages, so every refusal path is
//! tested without a network.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::envelope::{self, EnvelopeError, MessageType};
use tessera_protocol::ids::DeviceId;
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{
    DeviceRegistration, KeyProof, PairingReply, RegistrationAttestation, ServerUrl,
};

use crate::config::AuthenticatorConfig;
use crate::error::CoreError;
use crate::key_store::{KeyPurpose, KeyStore};
use crate::secret::TransportSecret;
use crate::signer::KeyStoreSigner;

/// A signed registration and its key proof, ready to send. Its `Debug` shows no secret: the
/// transport secret prints `<redacted>` (and is zeroized when dropped).
#[derive(Debug, Clone)]
pub(crate) struct SignedRegistration {
    pub registration: String,
    pub user_verification_proof: String,
    pub digest: Sha256Digest,
    /// The secret of the registration's OTP transport key (SEC1 scalar, base64url): kept with
    /// the pending pairing in the encrypted state until the reply opens the seed.
    pub otp_transport_secret: TransportSecret,
}

/// Creates the enrollment's two keys under the given aliases and signs a registration for
/// `audience` with them, naming the installation by `device_key` (the installation's device
/// key, whose id is the device id) and proving it with a [`DeviceKeyProof`] signed by that key.
///
/// [`DeviceKeyProof`]: tessera_protocol::pairing::DeviceKeyProof
pub(crate) fn create_registration(
    key_store: &Arc<dyn KeyStore>,
    config: &AuthenticatorConfig,
    device_key: &KeyStoreSigner,
    audience: &ServerUrl,
    possession_alias: &str,
    user_verification_alias: &str,
) -> Result<SignedRegistration, CoreError> {
    let device_key_jwk = device_key.public_jwk().clone();
    let device_id = DeviceId::of_device_key(&device_key_jwk);
    let nonce = DeviceRegistration::new_nonce();
    let challenge = DeviceRegistration::attestation_challenge(audience, &device_id, &nonce);
    let attestation = create_keys(
        key_store,
        challenge.as_bytes(),
        possession_alias,
        user_verification_alias,
    )?;
    let possession = KeyStoreSigner::new(Arc::clone(key_store), possession_alias)?;
    let user_verification = KeyStoreSigner::new(Arc::clone(key_store), user_verification_alias)?;
    // A software key for this pairing only: the server seals the OTP seed to it.
    let transport = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let transport_public = tessera_protocol::jwk::PublicJwk::from_verifying_key(
        &p256::ecdsa::VerifyingKey::from(transport.public_key()),
    );
    let otp_transport_secret = TransportSecret::new({
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(transport.to_bytes())
    });
    let mut registration = DeviceRegistration {
        v: PROTOCOL_VERSION,
        audience: audience.clone(),
        device_id,
        nonce,
        issued_at: tessera_protocol::time::now(),
        possession_key: possession.public_jwk().clone(),
        user_verification_key: user_verification.public_jwk().clone(),
        device: config.device.clone(),
        signals: config.signals,
        push: config.push.clone(),
        otp_transport_key: Some(transport_public),
        device_key: device_key_jwk,
        device_key_proof: String::new(),
        attestation,
    };
    registration.device_key_proof = envelope::sign(
        MessageType::DeviceKeyProof,
        &registration.device_key_claims(),
        device_key,
    )
    .map_err(signing_failed)?;
    let registration = envelope::sign(MessageType::Registration, &registration, &possession)
        .map_err(signing_failed)?;
    let digest = envelope::digest_of(&registration).map_err(signing_failed)?;
    let proof = KeyProof {
        v: PROTOCOL_VERSION,
        registration_digest: digest,
    };
    let user_verification_proof = envelope::sign(MessageType::KeyProof, &proof, &user_verification)
        .map_err(signing_failed)?;
    Ok(SignedRegistration {
        registration,
        user_verification_proof,
        digest,
        otp_transport_secret,
    })
}

/// Creates the enrollment's two keys, attested over `challenge` where the key store can: both
/// with Android Key Attestation chains, or else with an Apple App Attest attestation of the app.
/// A store that attests one key but not the other sends no chains (the server needs both).
fn create_keys(
    key_store: &Arc<dyn KeyStore>,
    challenge: &[u8],
    possession_alias: &str,
    user_verification_alias: &str,
) -> Result<Option<RegistrationAttestation>, CoreError> {
    let possession_chain = key_store.generate_attested_signing_key(
        possession_alias,
        KeyPurpose::Possession,
        challenge,
    )?;
    if possession_chain.is_none() {
        key_store.generate_signing_key(possession_alias, KeyPurpose::Possession)?;
    }
    let user_verification_chain = key_store.generate_attested_signing_key(
        user_verification_alias,
        KeyPurpose::UserVerification,
        challenge,
    )?;
    if user_verification_chain.is_none() {
        key_store.generate_signing_key(user_verification_alias, KeyPurpose::UserVerification)?;
    }
    let encode = |chain: Vec<Vec<u8>>| -> Vec<String> {
        chain.iter().map(|der| STANDARD.encode(der)).collect()
    };
    if let (Some(possession), Some(user_verification)) = (possession_chain, user_verification_chain)
    {
        return Ok(Some(RegistrationAttestation::AndroidKey {
            possession_chain: encode(possession),
            user_verification_chain: encode(user_verification),
        }));
    }
    Ok(key_store
        .attest_app(challenge)?
        .map(|attested| RegistrationAttestation::AppleAppAttest {
            key_id: STANDARD.encode(&attested.key_id),
            attestation_object: STANDARD.encode(&attested.attestation_object),
        }))
}

fn signing_failed(e: EnvelopeError) -> CoreError {
    CoreError::KeyStore(e.to_string())
}

/// Which server keys a pairing reply may be signed with.
#[derive(Debug, Clone, Copy)]
pub enum ReplyTrust<'a> {
    /// The device has pinned keys for this server: only those.
    Pinned(&'a JwkSet),
    /// First contact over the direct channel to the configured server: the reply's own key set.
    FirstUseDirect,
    /// First contact through a relay: the key set the server itself publishes.
    Published(&'a JwkSet),
}

/// Checks a pairing reply (the server payload): signature by a trusted key, issuer, the binding to
/// the registration this device sent, and the device id. Returns the reply only if all hold.
pub fn verify_pairing_reply(
    server_payload: &str,
    expected_issuer: &ServerUrl,
    expected_registration: &Sha256Digest,
    device_id: &DeviceId,
    trust: ReplyTrust<'_>,
) -> Result<PairingReply, CoreError> {
    let untrusted: PairingReply = envelope::unverified_payload(server_payload)
        .map_err(|_| CoreError::InvalidServerResponse("the server payload is malformed".into()))?;
    let header = envelope::inspect(server_payload)
        .map_err(|_| CoreError::InvalidServerResponse("the server payload is malformed".into()))?;
    let verify_with = |keys: &JwkSet| -> Result<PairingReply, CoreError> {
        envelope::verify_with_set::<PairingReply>(server_payload, MessageType::PairingReply, keys)
            .map(|v| v.payload)
            .map_err(|e| match e {
                EnvelopeError::UnknownKey | EnvelopeError::BadSignature => {
                    CoreError::UntrustedServerKey
                }
                _ => CoreError::InvalidServerResponse("the server payload is malformed".into()),
            })
    };
    let reply = match trust {
        ReplyTrust::Pinned(keys) => verify_with(keys)?,
        ReplyTrust::FirstUseDirect => verify_with(&untrusted.server_keys)?,
        ReplyTrust::Published(published) => {
            let key = published
                .find(&header.kid)
                .ok_or(CoreError::UntrustedServerKey)?;
            let announced = untrusted
                .server_keys
                .find(&header.kid)
                .ok_or(CoreError::UntrustedServerKey)?;
            if !key.same_key(announced) {
                return Err(CoreError::UntrustedServerKey);
            }
            verify_with(published)?
        }
    };
    if &reply.issuer != expected_issuer {
        return Err(CoreError::ReplyMismatch("issued by another server"));
    }
    if !reply.registration_digest.ct_eq(expected_registration) {
        return Err(CoreError::ReplyMismatch("answers another registration"));
    }
    if &reply.device_id != device_id {
        return Err(CoreError::ReplyMismatch("names another device"));
    }
    if reply.v != PROTOCOL_VERSION {
        return Err(CoreError::ReplyMismatch("unsupported protocol version"));
    }
    if reply.server_keys.find(&header.kid).is_none() {
        return Err(CoreError::ReplyMismatch(
            "signing key missing from the announced key set",
        ));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_store::{KeyStoreError, SoftwareKeyStore};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use tessera_protocol::envelope::SoftwareSigningKey;
    use tessera_protocol::pairing::ApplicationInfo;

    struct Fixture {
        server_key: SoftwareSigningKey,
        issuer: ServerUrl,
        device_id: DeviceId,
        registration: SignedRegistration,
    }

    fn fixture() -> Fixture {
        let ks: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::in_memory());
        let issuer = ServerUrl::parse("https://auth.example.com").unwrap();
        ks.generate_signing_key("d", KeyPurpose::Possession)
            .unwrap();
        let device_key = KeyStoreSigner::new(Arc::clone(&ks), "d").unwrap();
        let device_id = DeviceId::of_device_key(device_key.public_jwk());
        let registration = create_registration(
            &ks,
            &AuthenticatorConfig::default(),
            &device_key,
            &issuer,
            "p",
            "u",
        )
        .unwrap();
        Fixture {
            server_key: SoftwareSigningKey::generate(),
            issuer,
            device_id,
            registration,
        }
    }

    /// A key store that attests like Android: a fixed "chain" per key, recording the challenge.
    struct Attesting {
        inner: SoftwareKeyStore,
        challenges: std::sync::Mutex<Vec<Vec<u8>>>,
        android: bool,
    }

    impl KeyStore for Attesting {
        fn generate_signing_key(
            &self,
            alias: &str,
            purpose: KeyPurpose,
        ) -> Result<Vec<u8>, KeyStoreError> {
            self.inner.generate_signing_key(alias, purpose)
        }
        fn public_key(&self, alias: &str) -> Result<Option<Vec<u8>>, KeyStoreError> {
            self.inner.public_key(alias)
        }
        fn sign(&self, alias: &str, data: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
            self.inner.sign(alias, data)
        }
        fn delete_key(&self, alias: &str) -> Result<(), KeyStoreError> {
            self.inner.delete_key(alias)
        }
        fn seal(&self, alias: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
            self.inner.seal(alias, plaintext)
        }
        fn open(
            &self,
            alias: &str,
            sealed: &[u8],
        ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyStoreError> {
            self.inner.open(alias, sealed)
        }
        fn generate_attested_signing_key(
            &self,
            alias: &str,
            purpose: KeyPurpose,
            challenge: &[u8],
        ) -> Result<Option<Vec<Vec<u8>>>, KeyStoreError> {
            if !self.android {
                return Ok(None);
            }
            self.challenges.lock().unwrap().push(challenge.to_vec());
            self.inner.generate_signing_key(alias, purpose)?;
            Ok(Some(vec![vec![1, 2, 3], vec![4]]))
        }
        fn attest_app(
            &self,
            client_data_hash: &[u8],
        ) -> Result<Option<crate::key_store::AppAttestation>, KeyStoreError> {
            self.challenges
                .lock()
                .unwrap()
                .push(client_data_hash.to_vec());
            Ok(Some(crate::key_store::AppAttestation {
                key_id: vec![9],
                attestation_object: vec![8, 7],
            }))
        }
    }

    fn attested_registration(android: bool) -> (DeviceRegistration, Vec<Vec<u8>>) {
        let store = Arc::new(Attesting {
            inner: SoftwareKeyStore::in_memory(),
            challenges: std::sync::Mutex::new(Vec::new()),
            android,
        });
        let ks: Arc<dyn KeyStore> = store.clone();
        ks.generate_signing_key("d", KeyPurpose::Possession)
            .unwrap();
        let device_key = KeyStoreSigner::new(Arc::clone(&ks), "d").unwrap();
        let signed = create_registration(
            &ks,
            &AuthenticatorConfig::default(),
            &device_key,
            &ServerUrl::parse("https://auth.example.com").unwrap(),
            "p",
            "u",
        )
        .unwrap();
        let registration: DeviceRegistration =
            envelope::unverified_payload(&signed.registration).unwrap();
        let challenges = store.challenges.lock().unwrap().clone();
        (registration, challenges)
    }

    #[test]
    fn an_attesting_key_store_sends_both_chains_over_the_registration_challenge() {
        let (registration, challenges) = attested_registration(true);
        let expected = registration.own_attestation_challenge();
        assert_eq!(challenges.len(), 2);
        assert!(challenges.iter().all(|c| c == expected.as_bytes()));
        assert_eq!(
            registration.attestation,
            Some(RegistrationAttestation::AndroidKey {
                possession_chain: vec!["AQID".into(), "BA==".into()],
                user_verification_chain: vec!["AQID".into(), "BA==".into()],
            })
        );
    }

    #[test]
    fn an_app_attesting_key_store_sends_the_attestation_object() {
        let (registration, challenges) = attested_registration(false);
        assert_eq!(
            challenges,
            vec![registration.own_attestation_challenge().as_bytes().to_vec()]
        );
        assert_eq!(
            registration.attestation,
            Some(RegistrationAttestation::AppleAppAttest {
                key_id: "CQ==".into(),
                attestation_object: "CAc=".into(),
            })
        );
    }

    #[test]
    fn a_software_key_store_sends_no_attestation() {
        let f = fixture();
        let registration: DeviceRegistration =
            envelope::unverified_payload(&f.registration.registration).unwrap();
        assert_eq!(registration.attestation, None);
    }

    fn reply(f: &Fixture) -> PairingReply {
        PairingReply {
            v: PROTOCOL_VERSION,
            issuer: f.issuer.clone(),
            application: ApplicationInfo {
                id: tessera_protocol::ids::ApplicationId::generate(),
                name: "Bank".into(),
            },
            user_id: "alice".parse().unwrap(),
            enrollment_id: tessera_protocol::ids::EnrollmentId::generate(),
            device_id: f.device_id.clone(),
            registration_digest: f.registration.digest,
            server_keys: JwkSet {
                keys: vec![f.server_key.public_jwk()],
            },
            pending_verification: false,
            otp: None,
            issued_at: 1,
        }
    }

    fn signed(r: &PairingReply, key: &SoftwareSigningKey) -> String {
        envelope::sign(MessageType::PairingReply, r, key).unwrap()
    }

    fn check(f: &Fixture, jws: &str, trust: ReplyTrust<'_>) -> Result<PairingReply, CoreError> {
        verify_pairing_reply(jws, &f.issuer, &f.registration.digest, &f.device_id, trust)
    }

    #[test]
    fn the_registration_is_self_consistent() {
        let f = fixture();
        let reg: DeviceRegistration =
            envelope::unverified_payload(&f.registration.registration).unwrap();
        envelope::verify::<DeviceRegistration>(
            &f.registration.registration,
            MessageType::Registration,
            &reg.possession_key,
        )
        .unwrap();
        let proof = envelope::verify::<KeyProof>(
            &f.registration.user_verification_proof,
            MessageType::KeyProof,
            &reg.user_verification_key,
        )
        .unwrap();
        assert_eq!(proof.payload.registration_digest, f.registration.digest);
        assert_eq!(reg.device_id, f.device_id);
        assert_eq!(reg.check_device_key(), Ok(()), "the device key is proven");
        assert_eq!(
            envelope::inspect(&f.registration.registration).unwrap().kid,
            reg.possession_key.thumbprint()
        );
    }

    #[test]
    fn debug_of_a_signed_registration_shows_no_secret() {
        let f = fixture();
        let secret = f.registration.otp_transport_secret.expose().to_string();
        assert!(secret.len() >= 40, "a 256-bit scalar in base64url");
        let shown = format!("{:?}", f.registration);
        assert!(!shown.contains(&secret), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn a_good_reply_is_accepted_under_each_trust_mode() {
        let f = fixture();
        let jws = signed(&reply(&f), &f.server_key);
        let set = JwkSet {
            keys: vec![f.server_key.public_jwk()],
        };
        check(&f, &jws, ReplyTrust::FirstUseDirect).unwrap();
        check(&f, &jws, ReplyTrust::Pinned(&set)).unwrap();
        check(&f, &jws, ReplyTrust::Published(&set)).unwrap();
    }

    #[test]
    fn tampered_and_mismatched_replies_are_refused() {
        let f = fixture();
        let good = reply(&f);
        let jws = signed(&good, &f.server_key);

        // One character of the payload changed.
        let parts: Vec<&str> = jws.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["user_id"] = "mallory".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        );
        assert_eq!(
            check(&f, &tampered, ReplyTrust::FirstUseDirect).unwrap_err(),
            CoreError::UntrustedServerKey
        );

        let mismatches: Vec<(PairingReply, &str)> = vec![
            (
                PairingReply {
                    issuer: ServerUrl::parse("https://evil.example").unwrap(),
                    ..good.clone()
                },
                "issuer",
            ),
            (
                PairingReply {
                    registration_digest: Sha256Digest::of_bytes(b"other"),
                    ..good.clone()
                },
                "registration",
            ),
            (
                PairingReply {
                    device_id: DeviceId::generate(),
                    ..good.clone()
                },
                "device",
            ),
        ];
        for (r, what) in mismatches {
            let err =
                check(&f, &signed(&r, &f.server_key), ReplyTrust::FirstUseDirect).unwrap_err();
            assert!(
                matches!(err, CoreError::ReplyMismatch(_)),
                "{what}: {err:?}"
            );
        }

        // Signed by a key that is not in the announced set.
        let stranger = SoftwareSigningKey::generate();
        let err = check(&f, &signed(&good, &stranger), ReplyTrust::FirstUseDirect).unwrap_err();
        assert_eq!(err, CoreError::UntrustedServerKey);

        // Pinned keys win over whatever the reply announces.
        let attacker = SoftwareSigningKey::generate();
        let forged = PairingReply {
            server_keys: JwkSet {
                keys: vec![attacker.public_jwk()],
            },
            ..good.clone()
        };
        let pinned = JwkSet {
            keys: vec![f.server_key.public_jwk()],
        };
        let err = check(&f, &signed(&forged, &attacker), ReplyTrust::Pinned(&pinned)).unwrap_err();
        assert_eq!(err, CoreError::UntrustedServerKey);
        // And the published set too.
        let err = check(
            &f,
            &signed(&forged, &attacker),
            ReplyTrust::Published(&pinned),
        )
        .unwrap_err();
        assert_eq!(err, CoreError::UntrustedServerKey);

        // Garbage.
        assert!(matches!(
            check(&f, "garbage", ReplyTrust::FirstUseDirect).unwrap_err(),
            CoreError::InvalidServerResponse(_)
        ));
    }
}
