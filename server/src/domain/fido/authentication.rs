//! The authentication ceremony: `ASSERTION_REQUIRED` carries the options for
//! `navigator.credentials.get` (the user's usable credentials, or the one picked);
//! `checkAssertion` verifies the answer (challenge, origin, RP id, signature, user
//! verification as the settings require, the credential is this user's) and the signature
//! counter: it must rise (a conditional update, so two racing assertions cannot both pass);
//! one that goes backwards flags the credential as cloned, records it, and refuses it from then
//! on.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::fido::FidoUserVerification;
use tessera_protocol::ids::UserId;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    AuthenticationState, Credential, PublicKeyCredential, UserVerificationPolicy,
};

use super::super::audit::{Actor, Event, new_id, record};
use super::super::{Ctx, DomainError};
use super::{CEREMONY_SECONDS, describe, kind, refuse, relying_party, settings};
use crate::store::applications::Application;
use crate::store::fido_credentials::{self as store, Ceremony, StoredCredential};

/// Whether the user can sign in with a FIDO credential now (one not flagged).
pub(crate) fn usable(c: &StoredCredential) -> bool {
    c.compromised_at.is_none()
}

fn parsed(c: &StoredCredential) -> Result<Credential, DomainError> {
    serde_json::from_str(&c.credential)
        .map_err(|_| DomainError::Internal("a stored FIDO credential does not parse"))
}

/// Starts an assertion with the user's usable credentials (only `only`, when given); answers
/// the options for `navigator.credentials.get` and the ceremony's id.
pub(crate) async fn start(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    flow_id: &str,
    only: Option<&str>,
) -> Result<(Value, String), DomainError> {
    let creds: Vec<Credential> = store::list_for_user(&ctx.db, &app.id, user)
        .await?
        .iter()
        .filter(|c| usable(c) && only.is_none_or(|id| c.id == id))
        .map(parsed)
        .collect::<Result<_, _>>()?;
    if creds.is_empty() {
        return Err(DomainError::new(
            ErrorCode::FidoCredentialNotFound,
            "the user has no usable FIDO credential",
        ));
    }
    let settings = settings::get(&ctx.db, &app.id).await?;
    let rp = relying_party(ctx, &app.name, &settings)?;
    let policy = match settings.user_verification {
        FidoUserVerification::Required => UserVerificationPolicy::Required,
        FidoUserVerification::Preferred => UserVerificationPolicy::Preferred,
    };
    let builder = rp
        .new_challenge_authenticate_builder(creds, Some(policy))
        .map_err(|_| DomainError::Internal("an authentication challenge could not be made"))?;
    let (options, state) = rp
        .generate_challenge_authenticate(builder)
        .map_err(|_| DomainError::Internal("an authentication challenge could not be made"))?;
    let ceremony = Ceremony {
        id: new_id("fca_"),
        application_id: app.id.clone(),
        user_id: Some(user.clone()),
        flow_id: flow_id.to_string(),
        purpose: "authentication".into(),
        state: serde_json::to_string(&state)
            .map_err(|_| DomainError::Internal("encoding a ceremony"))?,
        expires_at: ctx.now() + CEREMONY_SECONDS,
    };
    store::insert_ceremony(&ctx.db, &ceremony, ctx.now()).await?;
    let options = serde_json::to_value(&options)
        .map_err(|_| DomainError::Internal("encoding assertion options"))?;
    Ok((options, ceremony.id))
}

/// Flags a cloned credential and records it; answers the refusal.
async fn compromised(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    credential: &StoredCredential,
) -> DomainError {
    if let Err(e) = store::flag_compromised(&ctx.db, &credential.id, ctx.now()).await {
        tracing::error!(error = %e, "a cloned FIDO credential could not be flagged");
    }
    let event = Event::new("fido.counter_regression", Actor::Anonymous, "refused")
        .app(app.id.as_str())
        .user(user.as_str())
        .subject(&credential.id)
        .details(json!({ "credential": credential.id, "stored_counter": credential.counter }));
    record(ctx, event).await;
    tracing::warn!(credential = %credential.id, "FIDO signature counter went backwards: credential flagged");
    DomainError::new(
        ErrorCode::FidoCredentialCompromised,
        "this authenticator's signature counter went backwards (it may be cloned); it is blocked until an administrator removes it",
    )
}

/// Verifies the assertion answering the ceremony `ceremony_id` of this flow (taken once);
/// answers the result attributes (`pingid.authentication.type`, `amr`, the credential). The
/// ceremony must have been started for this application and `user`: one started for another
/// user is refused as an unknown one (`fido_verification_failed`) and is left for its own user.
pub(crate) async fn finish(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    flow_id: &str,
    ceremony_id: &str,
    credential: Value,
) -> Result<BTreeMap<String, Value>, DomainError> {
    let response: PublicKeyCredential = serde_json::from_value(credential)
        .map_err(|_| DomainError::invalid("credential is not a WebAuthn assertion"))?;
    // Taken only in the name it was started for (this application, flow and user): an answer
    // in another user's name finds nothing, as an unknown or expired one does, and leaves the
    // ceremony to its own user.
    let state = store::take_ceremony(
        &ctx.db,
        ceremony_id,
        &app.id,
        Some(user),
        flow_id,
        "authentication",
        ctx.now(),
    )
    .await?
    .ok_or_else(|| {
        super::verification_failed("this sign-in was already answered or expired; start again")
    })?;
    let state: AuthenticationState = serde_json::from_str(&state)
        .map_err(|_| DomainError::Internal("a stored ceremony does not parse"))?;
    let credential_id = URL_SAFE_NO_PAD.encode(&response.raw_id);
    let Some(stored) = store::by_credential_id(&ctx.db, &app.id, &credential_id)
        .await?
        .filter(|c| &c.user_id == user)
    else {
        let message = "the credential is not one of this user's".to_string();
        return Err(refuse(ctx, app, user, "authentication", message).await);
    };
    verified(ctx, app, user, &stored, &response, &state).await
}

/// Verifies `response` for the stored credential `stored` of `user` against the ceremony's
/// `state` (the library checks challenge, origin, RP id, signature and user verification),
/// then applies the counter rules; answers the result attributes.
async fn verified(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    stored: &StoredCredential,
    response: &PublicKeyCredential,
    state: &AuthenticationState,
) -> Result<BTreeMap<String, Value>, DomainError> {
    if !usable(stored) {
        return Err(DomainError::new(
            ErrorCode::FidoCredentialCompromised,
            "this authenticator is blocked (its signature counter went backwards)",
        ));
    }
    let mut cred = parsed(stored)?;
    let settings = settings::get(&ctx.db, &app.id).await?;
    let rp = relying_party(ctx, &app.name, &settings)?;
    let result = match rp.authenticate_credential(response, state) {
        Ok(result) => result,
        Err(WebauthnError::CredentialPossibleCompromise) => {
            return Err(compromised(ctx, app, user, stored).await);
        }
        Err(e) => {
            let message = format!("the assertion does not verify: {}", describe(&e));
            return Err(refuse(ctx, app, user, "authentication", message).await);
        }
    };
    cred.counter = result.counter();
    cred.backup_state = result.backup_state();
    let text =
        serde_json::to_string(&cred).map_err(|_| DomainError::Internal("encoding a credential"))?;
    let stored_counter = u32::try_from(stored.counter).unwrap_or(u32::MAX);
    if !kind::counter_acceptable(stored_counter, result.counter())
        || !store::record_use(
            &ctx.db,
            &stored.id,
            i64::from(result.counter()),
            result.backup_state(),
            &text,
            ctx.now(),
        )
        .await?
    {
        // Another assertion with this counter won the race, or the counter went back.
        return Err(compromised(ctx, app, user, stored).await);
    }
    let p = "pingid.authentication.";
    let mut attributes = BTreeMap::new();
    attributes.insert(format!("{p}type"), json!(stored.kind.as_str()));
    attributes.insert(
        format!("{p}amr"),
        json!(kind::amr(cred.backup_eligible, result.user_verified())),
    );
    attributes.insert(format!("{p}fido.credential_id"), json!(stored.id));
    attributes.insert(format!("{p}device.nickname"), json!(stored.nickname));
    if let Some(aaguid) = &stored.aaguid {
        attributes.insert(format!("{p}fido.aaguid"), json!(aaguid));
    }
    tracing::info!(credential = %stored.id, "FIDO assertion verified");
    Ok(attributes)
}

/// The purpose of a passkey sign-in's ceremony (no user named; an ordinary authentication's
/// ceremony cannot answer one, nor the other way round).
const PASSKEY: &str = "passkey";

/// The one answer to a passkey that names nobody here: the same words whatever the reason (an
/// unknown credential, another application's, a deleted user's, a user handle that does not
/// match, one not registered as a passkey), so the answer tells an attacker nothing about
/// which users or credentials exist; the audit log records the reason.
const NOT_A_PASSKEY_HERE: &str = "this passkey is not registered with this application";

/// Starts a passkey sign-in (no user named): options for `navigator.credentials.get` with an
/// empty allow list (the authenticator offers its discoverable credentials for the RP id) and
/// user verification required; answers them and the ceremony's id. The options are the same
/// for everyone: they name no user and no credential.
pub(crate) async fn start_passkey(
    ctx: &Ctx,
    app: &Application,
    flow_id: &str,
) -> Result<(Value, String), DomainError> {
    let settings = settings::get(&ctx.db, &app.id).await?;
    if !settings.discoverable_credentials {
        return Err(passkeys_not_enabled());
    }
    let rp = relying_party(ctx, &app.name, &settings)?;
    let builder = rp
        .new_challenge_authenticate_builder(Vec::new(), Some(UserVerificationPolicy::Required))
        .map_err(|_| DomainError::Internal("a passkey challenge could not be made"))?;
    let (options, state) = rp
        .generate_challenge_authenticate(builder)
        .map_err(|_| DomainError::Internal("a passkey challenge could not be made"))?;
    let ceremony = Ceremony {
        id: new_id("fcp_"),
        application_id: app.id.clone(),
        user_id: None,
        flow_id: flow_id.to_string(),
        purpose: PASSKEY.into(),
        state: serde_json::to_string(&state)
            .map_err(|_| DomainError::Internal("encoding a ceremony"))?,
        expires_at: ctx.now() + CEREMONY_SECONDS,
    };
    store::insert_ceremony(&ctx.db, &ceremony, ctx.now()).await?;
    let options = serde_json::to_value(&options)
        .map_err(|_| DomainError::Internal("encoding assertion options"))?;
    Ok((options, ceremony.id))
}

/// `passkeys_not_enabled`: the application does not register discoverable credentials.
pub(crate) fn passkeys_not_enabled() -> DomainError {
    DomainError::new(
        ErrorCode::PasskeysNotEnabled,
        "this application does not allow passkey sign-in (its FIDO settings have discoverable_credentials off)",
    )
}

/// A refused passkey: recorded (`fido.refused`, with the reason and the credential's user when
/// one is known), answered with [`NOT_A_PASSKEY_HERE`].
async fn refuse_passkey(
    ctx: &Ctx,
    app: &Application,
    user: Option<&UserId>,
    reason: &'static str,
) -> DomainError {
    let mut event = Event::new("fido.refused", Actor::Anonymous, "refused")
        .app(app.id.as_str())
        .details(json!({ "ceremony": PASSKEY, "message": reason }));
    if let Some(user) = user {
        event = event.user(user.as_str());
    }
    record(ctx, event).await;
    tracing::info!(reason, "passkey sign-in refused");
    super::verification_failed(NOT_A_PASSKEY_HERE)
}

/// Verifies the answer to the passkey ceremony `ceremony_id` of this flow (taken once): the
/// credential is found by its id among the application's, must be a discoverable one of a
/// user who still exists, and the `userHandle` the authenticator returned must be that user's
/// handle; then it is verified as any assertion (user verification required, counter rules).
/// Answers the user it names and the result attributes.
pub(crate) async fn finish_passkey(
    ctx: &Ctx,
    app: &Application,
    flow_id: &str,
    ceremony_id: &str,
    credential: Value,
) -> Result<(UserId, BTreeMap<String, Value>), DomainError> {
    let response: PublicKeyCredential = serde_json::from_value(credential)
        .map_err(|_| DomainError::invalid("credential is not a WebAuthn assertion"))?;
    // A passkey ceremony names no user: taken in this application's name only.
    let state = store::take_ceremony(
        &ctx.db,
        ceremony_id,
        &app.id,
        None,
        flow_id,
        PASSKEY,
        ctx.now(),
    )
    .await?
    .ok_or_else(|| {
        super::verification_failed("this sign-in was already answered or expired; start again")
    })?;
    let mut state: AuthenticationState = serde_json::from_str(&state)
        .map_err(|_| DomainError::Internal("a stored ceremony does not parse"))?;
    let credential_id = URL_SAFE_NO_PAD.encode(&response.raw_id);
    let Some(stored) = store::by_credential_id(&ctx.db, &app.id, &credential_id).await? else {
        return Err(refuse_passkey(ctx, app, None, "unknown credential").await);
    };
    let user = stored.user_id.clone();
    if !stored.discoverable {
        return Err(refuse_passkey(ctx, app, Some(&user), "not registered as a passkey").await);
    }
    let expected = super::user_handle(&app.id, &user);
    let matches = response
        .get_user_unique_id()
        .is_some_and(|handle| bool::from(handle.ct_eq(expected.as_slice())));
    if !matches {
        return Err(refuse_passkey(ctx, app, Some(&user), "user handle mismatch").await);
    }
    if crate::store::users::get(&ctx.db, &app.id, &user)
        .await?
        .is_none()
    {
        return Err(
            refuse_passkey(ctx, app, Some(&user), "the credential's user is deleted").await,
        );
    }
    // The ceremony allowed any credential: from here on, exactly the one found.
    state.set_allowed_credentials(vec![parsed(&stored)?]);
    let attributes = verified(ctx, app, &user, &stored, &response, &state).await?;
    Ok((user, attributes))
}

/// One assertion check as `checkAssertion` runs it, without its storage: for the benchmark of
/// the server's verification time (`tests/benches/fido_assertion.rs`).
pub struct AssertionCheck {
    rp: webauthn_rs_core::WebauthnCore,
    state: AuthenticationState,
}

/// Why a benchmarked assertion was refused.
#[derive(Debug, thiserror::Error)]
pub enum AssertionCheckError {
    /// The stored credential or the response does not parse.
    #[error("does not parse: {0}")]
    Parse(String),
    /// The response does not verify.
    #[error("does not verify: {0}")]
    Verify(String),
}

impl AssertionCheck {
    /// A challenge for `credential` (as the server stores it: the library's JSON) at relying
    /// party `rp_id` and `origin`; answers the check and the challenge (base64url) the
    /// authenticator signs.
    pub fn begin(
        rp_id: &str,
        origin: &str,
        credential: &str,
    ) -> Result<(Self, String), AssertionCheckError> {
        let origin =
            url::Url::parse(origin).map_err(|e| AssertionCheckError::Parse(e.to_string()))?;
        let cred: Credential = serde_json::from_str(credential)
            .map_err(|e| AssertionCheckError::Parse(e.to_string()))?;
        let rp = webauthn_rs_core::WebauthnCore::new_unsafe_experts_only(
            "bench",
            rp_id,
            vec![origin],
            std::time::Duration::from_secs(super::CEREMONY_SECONDS as u64),
            Some(false),
            Some(false),
        );
        let builder = rp
            .new_challenge_authenticate_builder(vec![cred], Some(UserVerificationPolicy::Preferred))
            .map_err(|e| AssertionCheckError::Verify(e.to_string()))?;
        let (options, state) = rp
            .generate_challenge_authenticate(builder)
            .map_err(|e| AssertionCheckError::Verify(e.to_string()))?;
        let challenge = URL_SAFE_NO_PAD.encode(&options.public_key.challenge);
        Ok((Self { rp, state }, challenge))
    }

    /// Parses and verifies the authenticator's answer (JSON, as the page posts it); answers
    /// its signature counter.
    pub fn verify(&self, response: &str) -> Result<u32, AssertionCheckError> {
        let response: PublicKeyCredential = serde_json::from_str(response)
            .map_err(|e| AssertionCheckError::Parse(e.to_string()))?;
        self.rp
            .authenticate_credential(&response, &self.state)
            .map(|r| r.counter())
            .map_err(|e| AssertionCheckError::Verify(describe(&e)))
    }
}
