//! The FIDO2 ceremonies called directly, without HTTP or a browser, on a real database (SQLite,
//! and PostgreSQL when `DATABASE_URL` names one): a software authenticator built here (a P-256
//! key, `none` attestation, authenticator data and client data as a browser passes them on, as
//! the `fido_assertion` bench builds its assertions) answers the options the server made. A
//! ceremony is taken once, dies with its time (by the clock) and belongs to its flow and user
//! (an answer in another user's name takes nothing); an assertion's ceremony belongs to its
//! user's credentials; a signature counter that goes back blocks the credential.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_protocol::api::AuthenticationMethod;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::fido::FidoCredentialType;
use tessera_protocol::ids::UserId;

use super::{CEREMONY_SECONDS, authentication, registration};
use crate::domain::testing::TestDomain;
use crate::store::fido_credentials::{self as store, StoredCredential};

/// The relying party of the test context: the server's own host and origin (the defaults of an
/// application without FIDO settings).
const RP_ID: &str = "auth.example.com";
const ORIGIN: &str = "https://auth.example.com";

/// A software authenticator with one P-256 credential.
struct Authenticator {
    key: SigningKey,
    credential_id: Vec<u8>,
    counter: u32,
}

impl Authenticator {
    fn new() -> Self {
        Self {
            key: SigningKey::random(&mut rand::rngs::OsRng),
            credential_id: rand::random::<[u8; 32]>().to_vec(),
            counter: 0,
        }
    }

    /// The client data a browser passes on for a ceremony of `kind` answering `challenge`.
    fn client_data(kind: &str, challenge: &str) -> Vec<u8> {
        json!({
            "type": kind,
            "challenge": challenge,
            "origin": ORIGIN,
            "crossOrigin": false,
        })
        .to_string()
        .into_bytes()
    }

    /// The credential's public key, COSE (EC2, P-256, ES256).
    fn cose_key(&self) -> Vec<u8> {
        use ciborium::Value as C;
        let point = self.key.verifying_key().to_encoded_point(false);
        let key = C::Map(vec![
            (C::Integer(1.into()), C::Integer(2.into())),
            (C::Integer(3.into()), C::Integer((-7).into())),
            (C::Integer((-1).into()), C::Integer(1.into())),
            (
                C::Integer((-2).into()),
                C::Bytes(point.x().expect("x").to_vec()),
            ),
            (
                C::Integer((-3).into()),
                C::Bytes(point.y().expect("y").to_vec()),
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&key, &mut bytes).expect("CBOR");
        bytes
    }

    /// What `navigator.credentials.create` answers for the registration `options`: the new
    /// credential with `none` attestation, the user present and verified.
    fn registration(&self, options: &Value) -> Value {
        use ciborium::Value as C;
        let mut auth_data = Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(0x01 | 0x04 | 0x40); // user present, user verified, attested data
        auth_data.extend_from_slice(&0u32.to_be_bytes());
        auth_data.extend_from_slice(&[0u8; 16]); // AAGUID
        let length = u16::try_from(self.credential_id.len()).expect("short");
        auth_data.extend_from_slice(&length.to_be_bytes());
        auth_data.extend_from_slice(&self.credential_id);
        auth_data.extend_from_slice(&self.cose_key());
        let object = C::Map(vec![
            (C::Text("fmt".into()), C::Text("none".into())),
            (C::Text("attStmt".into()), C::Map(Vec::new())),
            (C::Text("authData".into()), C::Bytes(auth_data)),
        ]);
        let mut attestation_object = Vec::new();
        ciborium::into_writer(&object, &mut attestation_object).expect("CBOR");
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "attestationObject": URL_SAFE_NO_PAD.encode(&attestation_object),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(
                    Self::client_data("webauthn.create", &challenge(options))
                ),
            },
            "extensions": {},
        })
    }

    /// What `navigator.credentials.get` answers for the assertion `options`, with the next
    /// signature counter.
    fn assertion(&mut self, options: &Value) -> Value {
        self.counter += 1;
        let mut auth_data = Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(0x01 | 0x04); // user present, user verified
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        let client_data = Self::client_data("webauthn.get", &challenge(options));
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let signature: DerSignature = self.key.sign(&signed);
        let id = URL_SAFE_NO_PAD.encode(&self.credential_id);
        json!({
            "id": id,
            "rawId": id,
            "type": "public-key",
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(&auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(&client_data),
                "signature": URL_SAFE_NO_PAD.encode(signature.as_bytes()),
                "userHandle": null,
            },
            "extensions": {},
        })
    }
}

/// The challenge of ceremony options (base64url), as the browser reads it.
fn challenge(options: &Value) -> String {
    options["publicKey"]["challenge"]
        .as_str()
        .expect("a challenge")
        .to_string()
}

/// A flow id of the test's own (ceremonies are bound to a flow by its id).
fn flow() -> String {
    format!("flw_{:032x}", rand::random::<u128>())
}

/// The user's credentials as stored.
async fn credentials_of(domain: &TestDomain, user: &UserId) -> Vec<StoredCredential> {
    store::list_for_user(&domain.ctx.db, &domain.app.id, user)
        .await
        .expect("read")
}

/// A security-key registration ceremony started for `user` in `flow`: its options and id.
async fn registration_started(domain: &TestDomain, user: &UserId, flow: &str) -> (Value, String) {
    registration::start(
        &domain.ctx,
        &domain.app,
        user,
        flow,
        AuthenticationMethod::SecurityKey,
    )
    .await
    .expect("started")
}

/// Answers `ceremony` of `flow` with `response`, in `user`'s name, the credential unnamed.
async fn registration_finished(
    domain: &TestDomain,
    user: &UserId,
    flow: &str,
    ceremony: &str,
    response: Value,
) -> Result<StoredCredential, crate::domain::DomainError> {
    registration::finish(
        &domain.ctx,
        &domain.app,
        user,
        flow,
        ceremony,
        response,
        None,
    )
    .await
}

/// A new security key registered for `user` through a whole registration ceremony.
async fn registered(domain: &TestDomain, user: &UserId) -> (Authenticator, StoredCredential) {
    let key = Authenticator::new();
    let flow = flow();
    let (options, ceremony) = registration_started(domain, user, &flow).await;
    let stored = registration_finished(domain, user, &flow, &ceremony, key.registration(&options))
        .await
        .expect("registered");
    (key, stored)
}

fn code_of<T: std::fmt::Debug>(result: Result<T, crate::domain::DomainError>) -> Option<ErrorCode> {
    result.expect_err("refused").code()
}

#[tokio::test]
async fn a_registration_ceremony_is_answered_once() {
    for domain in TestDomain::each_engine().await {
        let alice = domain.user("alice").await;
        let flow = flow();
        let (options, ceremony) = registration_started(&domain, &alice, &flow).await;
        assert_eq!(options["publicKey"]["rp"]["id"], json!(RP_ID));
        let key = Authenticator::new();
        let stored = registration::finish(
            &domain.ctx,
            &domain.app,
            &alice,
            &flow,
            &ceremony,
            key.registration(&options),
            Some("Blue key".into()),
        )
        .await
        .expect("registered");
        assert_eq!(stored.user_id, alice);
        assert_eq!(stored.kind, FidoCredentialType::SecurityKey);
        assert_eq!(stored.nickname, "Blue key");
        assert_eq!(
            stored.credential_id,
            URL_SAFE_NO_PAD.encode(&key.credential_id)
        );

        // The ceremony was taken by its answer: another authenticator answering it registers
        // nothing.
        let second = Authenticator::new();
        assert_eq!(
            code_of(
                registration_finished(
                    &domain,
                    &alice,
                    &flow,
                    &ceremony,
                    second.registration(&options)
                )
                .await
            ),
            Some(ErrorCode::FidoVerificationFailed)
        );
        assert_eq!(credentials_of(&domain, &alice).await.len(), 1);
    }
}

#[tokio::test]
async fn a_registration_ceremony_of_another_flow_or_past_its_time_is_refused() {
    for domain in TestDomain::each_engine().await {
        let bob = domain.user("bob").await;
        let key = Authenticator::new();
        let start = |flow: String| {
            let (ctx, app, bob) = (domain.ctx.clone(), domain.app.clone(), bob.clone());
            async move {
                let (options, ceremony) =
                    registration::start(&ctx, &app, &bob, &flow, AuthenticationMethod::SecurityKey)
                        .await
                        .expect("started");
                (flow, options, ceremony)
            }
        };
        let finish = |flow: String, ceremony: String, response: Value| {
            let (ctx, app, bob) = (domain.ctx.clone(), domain.app.clone(), bob.clone());
            async move { registration::finish(&ctx, &app, &bob, &flow, &ceremony, response, None).await }
        };

        // Answered in another flow's name: refused.
        let (own_flow, options, ceremony) = start(flow()).await;
        assert_eq!(
            code_of(finish(flow(), ceremony.clone(), key.registration(&options)).await),
            Some(ErrorCode::FidoVerificationFailed)
        );
        // Answered after its time: refused.
        domain
            .clock
            .advance(Duration::from_secs(CEREMONY_SECONDS as u64 + 1));
        assert_eq!(
            code_of(finish(own_flow, ceremony, key.registration(&options)).await),
            Some(ErrorCode::FidoVerificationFailed)
        );
        assert!(credentials_of(&domain, &bob).await.is_empty());

        // The same authenticator answering a ceremony in time, in its flow, registers.
        let (flow, options, ceremony) = start(flow()).await;
        domain
            .clock
            .advance(Duration::from_secs(CEREMONY_SECONDS as u64 - 1));
        finish(flow, ceremony, key.registration(&options))
            .await
            .expect("registered");
        assert_eq!(credentials_of(&domain, &bob).await.len(), 1);
    }
}

#[tokio::test]
async fn an_assertion_verifies_once_and_a_counter_that_goes_back_blocks_the_key() {
    for domain in TestDomain::each_engine().await {
        let carol = domain.user("carol").await;
        let (mut key, stored) = registered(&domain, &carol).await;

        let flow = flow();
        let (options, ceremony) =
            authentication::start(&domain.ctx, &domain.app, &carol, &flow, None)
                .await
                .expect("started");
        let answer = key.assertion(&options);
        let attributes = authentication::finish(
            &domain.ctx,
            &domain.app,
            &carol,
            &flow,
            &ceremony,
            answer.clone(),
        )
        .await
        .expect("verified");
        assert_eq!(
            attributes["pingid.authentication.type"],
            json!(stored.kind.as_str())
        );
        assert_eq!(
            attributes["pingid.authentication.fido.credential_id"],
            json!(stored.id)
        );
        assert_eq!(
            credentials_of(&domain, &carol).await[0].counter,
            1,
            "the counter is kept"
        );
        // The same answer again: its ceremony is gone.
        assert_eq!(
            code_of(
                authentication::finish(&domain.ctx, &domain.app, &carol, &flow, &ceremony, answer)
                    .await
            ),
            Some(ErrorCode::FidoVerificationFailed)
        );

        // A clone of the key, its counter behind the one seen: refused and the key blocked.
        let (options, ceremony) =
            authentication::start(&domain.ctx, &domain.app, &carol, &flow, None)
                .await
                .expect("started");
        key.counter = 0;
        let cloned = key.assertion(&options);
        assert_eq!(
            code_of(
                authentication::finish(&domain.ctx, &domain.app, &carol, &flow, &ceremony, cloned)
                    .await
            ),
            Some(ErrorCode::FidoCredentialCompromised)
        );
        assert!(
            credentials_of(&domain, &carol).await[0]
                .compromised_at
                .is_some(),
            "flagged"
        );
        assert_eq!(
            code_of(authentication::start(&domain.ctx, &domain.app, &carol, &flow, None).await),
            Some(ErrorCode::FidoCredentialNotFound),
            "no usable credential is offered any more"
        );
    }
}

#[tokio::test]
async fn an_assertion_answered_in_another_users_name_is_refused() {
    for domain in TestDomain::each_engine().await {
        let dave = domain.user("dave").await;
        let erin = domain.user("erin").await;
        let (mut daves_key, _) = registered(&domain, &dave).await;
        let _ = registered(&domain, &erin).await;

        // Dave's ceremony, answered by Dave's key, submitted as Erin's.
        let flow = flow();
        let (options, ceremony) =
            authentication::start(&domain.ctx, &domain.app, &dave, &flow, None)
                .await
                .expect("started");
        let answer = daves_key.assertion(&options);
        assert_eq!(
            code_of(
                authentication::finish(&domain.ctx, &domain.app, &erin, &flow, &ceremony, answer)
                    .await
            ),
            Some(ErrorCode::FidoVerificationFailed)
        );
        let daves = credentials_of(&domain, &dave).await;
        assert_eq!(
            (daves[0].counter, daves[0].last_used_at),
            (0, None),
            "not used"
        );
    }
}

#[tokio::test]
async fn a_registration_ceremony_answered_in_another_users_name_is_refused_and_left() {
    for domain in TestDomain::each_engine().await {
        let alice = domain.user("alice").await;
        let bob = domain.user("bob").await;
        let flow = flow();
        let (options, ceremony) = registration_started(&domain, &alice, &flow).await;
        let key = Authenticator::new();

        // Alice's ceremony, in her flow, answered in Bob's name: refused as an unknown
        // ceremony, and nothing registered for either.
        assert_eq!(
            code_of(
                registration_finished(&domain, &bob, &flow, &ceremony, key.registration(&options))
                    .await
            ),
            Some(ErrorCode::FidoVerificationFailed)
        );
        assert!(credentials_of(&domain, &bob).await.is_empty());
        assert!(credentials_of(&domain, &alice).await.is_empty());

        // The refused answer did not take it: Alice still can.
        let stored = registration_finished(
            &domain,
            &alice,
            &flow,
            &ceremony,
            key.registration(&options),
        )
        .await
        .expect("registered");
        assert_eq!(stored.user_id, alice);
        assert_eq!(credentials_of(&domain, &alice).await.len(), 1);
        assert!(credentials_of(&domain, &bob).await.is_empty());
    }
}

#[tokio::test]
async fn an_assertion_ceremony_answered_in_another_users_name_is_refused_and_left() {
    for domain in TestDomain::each_engine().await {
        let frank = domain.user("frank").await;
        let grace = domain.user("grace").await;
        let (mut franks_key, _) = registered(&domain, &frank).await;
        let (mut graces_key, _) = registered(&domain, &grace).await;

        // Frank's ceremony, in his flow, answered by Grace's own key in Grace's name: refused
        // as an unknown ceremony, Grace's key not used.
        let flow = flow();
        let (options, ceremony) =
            authentication::start(&domain.ctx, &domain.app, &frank, &flow, None)
                .await
                .expect("started");
        let graces_answer = graces_key.assertion(&options);
        assert_eq!(
            code_of(
                authentication::finish(
                    &domain.ctx,
                    &domain.app,
                    &grace,
                    &flow,
                    &ceremony,
                    graces_answer
                )
                .await
            ),
            Some(ErrorCode::FidoVerificationFailed)
        );
        let graces = credentials_of(&domain, &grace).await;
        assert_eq!(
            (graces[0].counter, graces[0].last_used_at),
            (0, None),
            "not used"
        );

        // The refused answer did not take it: Frank's own answer still verifies.
        let answer = franks_key.assertion(&options);
        authentication::finish(&domain.ctx, &domain.app, &frank, &flow, &ceremony, answer)
            .await
            .expect("verified");
        assert_eq!(credentials_of(&domain, &frank).await[0].counter, 1);
    }
}
