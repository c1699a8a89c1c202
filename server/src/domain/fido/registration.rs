//! The registration ceremony: `startRegistration` asks the browser for a new credential of
//! the kind a missing mandatory method needs (a roaming key for `SECURITY_KEY`, the device's
//! own authenticator for `PLATFORM`); `checkRegistration` verifies what it created (challenge,
//! origin, RP id, user verification as the settings require, attestation and its AAGUID when
//! `direct`), types it and stores it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tessera_protocol::api::AuthenticationMethod;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::fido::{FidoAttestation, FidoCredentialType, FidoUserVerification};
use tessera_protocol::ids::UserId;
use webauthn_rs_core::internals::AuthenticatorData;
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, AuthenticatorAttachment, RegisterPublicKeyCredential,
    RegistrationState, UserVerificationPolicy,
};
use webauthn_rs_core::proto::{ParsedAttestationData, Registration};

use super::super::audit::{Actor, Event, new_id, record};
use super::super::{Ctx, DomainError};
use super::{
    CEREMONY_SECONDS, describe, kind, refuse, relying_party, settings, user_handle,
    verification_failed,
};
use crate::store::applications::Application;
use crate::store::fido_credentials::{self as store, Ceremony, Inserted, StoredCredential};

/// What a registration ceremony keeps until its response comes.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    state: RegistrationState,
    method: AuthenticationMethod,
}

/// The longest nickname.
pub(crate) const MAX_NICKNAME_CHARS: usize = 64;

/// The attachment a method registers.
fn attachment(method: AuthenticationMethod) -> Result<AuthenticatorAttachment, DomainError> {
    match method {
        AuthenticationMethod::SecurityKey => Ok(AuthenticatorAttachment::CrossPlatform),
        AuthenticationMethod::Platform => Ok(AuthenticatorAttachment::Platform),
        _ => Err(DomainError::invalid(
            "startRegistration registers SECURITY_KEY or PLATFORM",
        )),
    }
}

/// Starts registering a credential for `method`; answers the options for
/// `navigator.credentials.create` and the ceremony's id.
pub(crate) async fn start(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    flow_id: &str,
    method: AuthenticationMethod,
) -> Result<(serde_json::Value, String), DomainError> {
    let attach = attachment(method)?;
    let settings = settings::get(&ctx.db, &app.id).await?;
    let rp = relying_party(ctx, &app.name, &settings)?;
    let existing: Vec<Vec<u8>> = store::list_for_user(&ctx.db, &app.id, user)
        .await?
        .iter()
        .filter_map(|c| URL_SAFE_NO_PAD.decode(&c.credential_id).ok())
        .collect();
    let builder = rp
        .new_challenge_register_builder(&user_handle(&app.id, user), user.as_str(), user.as_str())
        .map_err(|_| DomainError::invalid("the user id cannot name a FIDO credential"))?
        .attestation(match settings.attestation {
            FidoAttestation::None => AttestationConveyancePreference::None,
            FidoAttestation::Direct => AttestationConveyancePreference::Direct,
        })
        .user_verification_policy(match settings.user_verification {
            FidoUserVerification::Required => UserVerificationPolicy::Required,
            FidoUserVerification::Preferred => UserVerificationPolicy::Preferred,
        })
        .exclude_credentials(Some(existing))
        .require_resident_key(settings.discoverable_credentials)
        .authenticator_attachment(Some(attach));
    let (options, state) = rp
        .generate_challenge_register(builder)
        .map_err(|_| DomainError::Internal("a registration challenge could not be made"))?;
    let ceremony = Ceremony {
        id: new_id("fcr_"),
        application_id: app.id.clone(),
        user_id: Some(user.clone()),
        flow_id: flow_id.to_string(),
        purpose: "registration".into(),
        state: serde_json::to_string(&Pending { state, method })
            .map_err(|_| DomainError::Internal("encoding a ceremony"))?,
        expires_at: ctx.now() + CEREMONY_SECONDS,
    };
    store::insert_ceremony(&ctx.db, &ceremony, ctx.now()).await?;
    let options = serde_json::to_value(&options)
        .map_err(|_| DomainError::Internal("encoding registration options"))?;
    Ok((options, ceremony.id))
}

/// The authenticator model the attestation names, as `xxxxxxxx-xxxx-…`.
fn aaguid_of(reg: &RegisterPublicKeyCredential) -> Option<String> {
    let object: ciborium::Value =
        ciborium::from_reader(reg.response.attestation_object.as_slice()).ok()?;
    let auth_data = object.as_map()?.iter().find_map(|(k, v)| {
        (k.as_text() == Some("authData"))
            .then(|| v.as_bytes().cloned())
            .flatten()
    })?;
    let data = AuthenticatorData::<Registration>::try_from(auth_data.as_slice()).ok()?;
    let a = data.acd?.aaguid;
    let hex = hex::encode(a);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Verifies and stores the credential the browser created for the ceremony `ceremony_id`
/// of this flow (taken once: a replayed response finds nothing). The ceremony must have been
/// started for this application and `user`: one started for another user is refused as an
/// unknown one (`fido_verification_failed`, nothing stored) and is left for its own user. A
/// user deleted while the ceremony ran is `user_not_found`, nothing stored.
pub(crate) async fn finish(
    ctx: &Ctx,
    app: &Application,
    user: &UserId,
    flow_id: &str,
    ceremony_id: &str,
    credential: serde_json::Value,
    nickname: Option<String>,
) -> Result<StoredCredential, DomainError> {
    let nickname = nickname.map(|n| n.trim().to_string());
    if let Some(n) = &nickname
        && (n.is_empty()
            || n.chars().count() > MAX_NICKNAME_CHARS
            || n.chars().any(|c| c.is_control()))
    {
        return Err(DomainError::invalid(format!(
            "nickname must be 1 to {MAX_NICKNAME_CHARS} characters without control characters"
        )));
    }
    let reg: RegisterPublicKeyCredential = serde_json::from_value(credential)
        .map_err(|_| DomainError::invalid("credential is not a WebAuthn registration response"))?;
    // Taken only in the name it was started for (this application, flow and user): an answer
    // in another user's name finds nothing, as an unknown or expired one does, and leaves the
    // ceremony to its own user.
    let pending = store::take_ceremony(
        &ctx.db,
        ceremony_id,
        &app.id,
        Some(user),
        flow_id,
        "registration",
        ctx.now(),
    )
    .await?
    .ok_or_else(|| {
        verification_failed("this registration was already answered or expired; start again")
    })?;
    let pending: Pending = serde_json::from_str(&pending)
        .map_err(|_| DomainError::Internal("a stored ceremony does not parse"))?;
    let settings = settings::get(&ctx.db, &app.id).await?;
    let rp = relying_party(ctx, &app.name, &settings)?;
    let cred = match rp.register_credential(&reg, &pending.state, None) {
        Ok(cred) => cred,
        Err(e) => {
            let message = format!("the registration does not verify: {}", describe(&e));
            return Err(refuse(ctx, app, user, "registration", message).await);
        }
    };
    let aaguid = match settings.attestation {
        FidoAttestation::None => None,
        FidoAttestation::Direct => {
            let attested = !matches!(
                cred.attestation.data,
                ParsedAttestationData::None
                    | ParsedAttestationData::Uncertain
                    | ParsedAttestationData::Self_
                    | ParsedAttestationData::ECDAA
            );
            let aaguid = aaguid_of(&reg);
            match aaguid {
                Some(a) if attested && settings.allowed_aaguids.contains(&a) => Some(a),
                other => {
                    let message = format!(
                        "the authenticator model {} is not allowed by this application",
                        other.as_deref().unwrap_or("(not attested)")
                    );
                    return Err(refuse(ctx, app, user, "registration", message).await);
                }
            }
        }
    };
    let attach = attachment(pending.method)?;
    let credential_type = kind::credential_type(attach, cred.user_verified);
    let credential_id = URL_SAFE_NO_PAD.encode(&cred.cred_id);
    let stored = StoredCredential {
        id: new_id("fido_"),
        application_id: app.id.clone(),
        user_id: user.clone(),
        credential_id,
        credential: serde_json::to_string(&cred)
            .map_err(|_| DomainError::Internal("encoding a credential"))?,
        kind: credential_type,
        aaguid,
        counter: i64::from(cred.counter),
        backup_eligible: cred.backup_eligible,
        backup_state: cred.backup_state,
        discoverable: settings.discoverable_credentials,
        nickname: nickname.unwrap_or_else(|| default_nickname(credential_type).to_string()),
        compromised_at: None,
        created_at: ctx.now(),
        last_used_at: None,
    };
    // The insert looks the user up under their row lock: a user deleted while the ceremony ran
    // gets no credential (one stored would outlive them, for a later user of the same id).
    match store::insert(&ctx.db, &stored).await? {
        Inserted::Stored => {}
        Inserted::Duplicate => {
            return Err(DomainError::new(
                ErrorCode::Conflict,
                "this authenticator's credential is already registered",
            ));
        }
        Inserted::NoSuchUser => {
            return Err(DomainError::new(
                ErrorCode::UserNotFound,
                "no such user in this application",
            ));
        }
    }
    let event = Event::new("fido.registered", Actor::Server, "success")
        .app(app.id.as_str())
        .user(user.as_str())
        .subject(&stored.id)
        .details(serde_json::json!({
            "credential": stored.id,
            "type": credential_type.as_str(),
            "aaguid": stored.aaguid,
        }));
    record(ctx, event).await;
    tracing::info!(credential = %stored.id, kind = credential_type.as_str(), "FIDO credential registered");
    Ok(stored)
}

fn default_nickname(t: FidoCredentialType) -> &'static str {
    match t {
        FidoCredentialType::SecurityKey => "Security key",
        FidoCredentialType::Platform => "This device",
        FidoCredentialType::Fido2Biometrics => "This device (biometrics)",
    }
}
