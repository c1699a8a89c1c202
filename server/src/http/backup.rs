//! Backup channels and one-time device authentication: passcodes sent by SMS, voice call or
//! email when no device of the user can be reached.
//!
//! - The customer registers the user's backup contacts (`PUT /v1/users/{id}/backup-contacts`).
//! - For a push authentication whose backup channels include the channel, a code is sent with
//!   `POST /v1/authentications/{id}/backup-codes` and answered with
//!   `POST /v1/authentications/{id}/otp`.
//! - Outside an authentication, `POST /v1/users/{id}/otp-challenges` sends a code to the user's
//!   registered contact (a channel of the application's backup channels), or, given a phone
//!   number or email address, to that destination for this one sign-in (*one-time device*:
//!   nothing is registered, only a masked form is kept); `POST /v1/otp-challenges/{id}/verify`
//!   checks it.
//!
//! Codes are 6 random digits stored as a salted SHA-256 digest, expire
//! ([`crate::ServerConfig::backup_code_ttl`]), are single use, allow
//! [`crate::ServerConfig::backup_code_attempts`] wrong tries, and are rate-limited per user and
//! channel. Wrong codes also count towards the user's passcode lockout.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tessera_protocol::api::{
    BackupChannel, BackupContacts, CreateOtpChallenge, OtpChallenge, OtpChallengeVerified,
    SendBackupCode, VerifyOtpRequest,
};
use tessera_protocol::authentication::AuthenticationId;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, UserId};
use tessera_protocol::time;
use zeroize::Zeroizing;

use super::errors::ApiError;
use super::extract::{ApiJson, AppAuth};
use super::users::{parse_user_id, require_user};
use crate::delivery::messages::WebhookNotifier;
use crate::domain::Ctx;
use crate::domain::ports::{Notice, Notifier, NotifyError};
use crate::store::otp_challenges::{self, Challenge};
use crate::store::users::{self, Contacts};
use crate::store::{applications, otp};

fn unavailable(message: &str) -> ApiError {
    ApiError::new(ErrorCode::BackupChannelUnavailable, message)
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// A phone number in E.164 form: `+`, then 8 to 15 digits, the first not 0.
pub(crate) fn valid_phone(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// An email address lettre accepts, at most 254 characters.
pub(crate) fn valid_email(email: &str) -> bool {
    email.len() <= 254 && email.parse::<lettre::Address>().is_ok()
}

/// `+*******4567`.
pub(crate) fn mask_phone(phone: &str) -> String {
    let keep = phone.len().saturating_sub(4);
    phone
        .char_indices()
        .map(|(i, c)| if i == 0 || i >= keep { c } else { '*' })
        .collect()
}

/// `a****@example.com`.
pub(crate) fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}****@{domain}")
        }
        None => "****".into(),
    }
}

fn masked(contacts: &Contacts) -> BackupContacts {
    BackupContacts {
        phone: contacts.phone.as_deref().map(mask_phone),
        email: contacts.email.as_deref().map(mask_email),
    }
}

/// Registers (replaces) the user's backup contacts; answers them masked.
#[utoipa::path(put, path = "/v1/users/{user_id}/backup-contacts", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = BackupContacts,
    responses((status = 200, body = BackupContacts),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn set_contacts(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<BackupContacts>,
) -> Result<Json<BackupContacts>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    if body.phone.as_deref().is_some_and(|p| !valid_phone(p)) {
        return Err(invalid(
            "the phone number must be in E.164 form (+ and 8 to 15 digits)",
        ));
    }
    if body.email.as_deref().is_some_and(|e| !valid_email(e)) {
        return Err(invalid("the email address is not valid"));
    }
    let contacts = Contacts {
        phone: body.phone,
        email: body.email,
    };
    users::set_contacts(&state.db, &auth.0.id, &user_id, &contacts).await?;
    tracing::info!(?contacts, "backup contacts registered");
    Ok(Json(masked(&contacts)))
}

/// The user's backup contacts, masked.
#[utoipa::path(get, path = "/v1/users/{user_id}/backup-contacts", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    responses((status = 200, body = BackupContacts),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn get_contacts(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
) -> Result<Json<BackupContacts>, ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let contacts = users::contacts(&state.db, &auth.0.id, &user_id)
        .await?
        .unwrap_or_default();
    Ok(Json(masked(&contacts)))
}

/// Where a code for `channel` goes among `contacts`.
fn destination(contacts: &Contacts, channel: BackupChannel) -> Option<String> {
    match channel {
        BackupChannel::Sms | BackupChannel::Voice => contacts.phone.clone(),
        BackupChannel::Email => contacts.email.clone(),
    }
}

fn digest(salt: &str, id: &str, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(id.as_bytes());
    h.update(b":");
    h.update(code.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `code` is the challenge's code (constant-time over the digests).
pub(crate) fn code_matches(challenge: &Challenge, code: &str) -> bool {
    let d = digest(&challenge.code_salt, &challenge.id, code);
    bool::from(d.as_bytes().ct_eq(challenge.code_digest.as_bytes()))
}

/// The attributes of a passcode received through `channel`.
pub(crate) fn channel_attributes(
    state: &Ctx,
    channel: BackupChannel,
    accessing_ip: Option<&str>,
) -> BTreeMap<String, Value> {
    let p = "pingid.authentication.";
    let mut a = BTreeMap::new();
    crate::domain::authentication::accessing_attributes(state, accessing_ip, &mut a);
    a.insert(format!("{p}type"), json!(channel.authentication_type()));
    let amr = match channel {
        BackupChannel::Sms => json!(["sms", "otp"]),
        BackupChannel::Voice => json!(["tel", "otp"]),
        BackupChannel::Email => json!(["otp"]),
    };
    a.insert(format!("{p}amr"), amr);
    a
}

/// The provider for `channel`: the server's SMTP notifier for email, the application's SMS
/// webhook for SMS and voice.
async fn notifier_for(
    state: &Ctx,
    app: &ApplicationId,
    channel: BackupChannel,
) -> Result<Arc<dyn Notifier>, ApiError> {
    match channel {
        BackupChannel::Email => state
            .email
            .clone()
            .ok_or_else(|| unavailable("this server has no email (SMTP) provider configured")),
        BackupChannel::Sms | BackupChannel::Voice => {
            let url = applications::otp_policy(&state.db, app)
                .await?
                .sms_webhook_url
                .ok_or_else(|| {
                    unavailable("this application has no SMS and voice provider webhook configured")
                })?;
            let client = state
                .push
                .client()
                .ok_or_else(|| ApiError::new(ErrorCode::InternalError, "internal error"))?;
            Ok(Arc::new(WebhookNotifier::new(client, url)))
        }
    }
}

/// What a code is sent for.
struct Send {
    app: ApplicationId,
    application_name: String,
    user: UserId,
    channel: BackupChannel,
    to: String,
    one_time_device: bool,
    authentication_id: Option<AuthenticationId>,
}

/// Rate-limits, stores the challenge (digest only), delivers the code; on a delivery failure the
/// challenge is removed again.
async fn send_code(state: &Ctx, send: Send) -> Result<OtpChallenge, ApiError> {
    let now = time::now();
    let since = now - i64::from(state.config.backup_code_window);
    let sent =
        otp_challenges::sent_since(&state.db, &send.app, &send.user, send.channel, since).await?;
    if sent >= i64::from(state.config.backup_codes_per_window) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many codes were sent to this user through this channel; try again later",
        ));
    }
    let notifier = notifier_for(state, &send.app, send.channel).await?;
    let mut id = [0u8; 16];
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let id = format!("otc_{}", URL_SAFE_NO_PAD.encode(id));
    let salt = URL_SAFE_NO_PAD.encode(salt);
    let code = Zeroizing::new(format!(
        "{:06}",
        rand::rngs::OsRng.gen_range(0..1_000_000u32)
    ));
    let ttl = i64::from(state.config.backup_code_ttl.max(1));
    let destination_hint = match send.channel {
        BackupChannel::Email => mask_email(&send.to),
        _ => mask_phone(&send.to),
    };
    let challenge = Challenge {
        id: id.clone(),
        application_id: send.app.clone(),
        user_id: send.user.clone(),
        authentication_id: send.authentication_id.clone(),
        channel: send.channel,
        destination_hint: destination_hint.clone(),
        one_time_device: send.one_time_device,
        code_digest: digest(&salt, &id, &code),
        code_salt: salt,
        attempts: 0,
        created_at: now,
        expires_at: now + ttl,
        used_at: None,
    };
    otp_challenges::insert(&state.db, &challenge).await?;
    let notice = Notice {
        channel: send.channel,
        to: send.to,
        code,
        application_name: send.application_name,
        application_id: send.app,
        user_id: send.user,
        expires_at: challenge.expires_at,
        valid_minutes: (ttl + 59) / 60,
    };
    if let Err(e) = notifier.send(&notice).await {
        otp_challenges::delete(&state.db, &id).await?;
        tracing::warn!(channel = send.channel.as_str(), error = %e, "backup code not delivered");
        return Err(ApiError::new(
            ErrorCode::DeliveryFailed,
            match e {
                NotifyError::BadDestination => "the provider refused the destination",
                _ => "the provider did not accept the message; try again or another channel",
            },
        ));
    }
    tracing::info!(
        challenge_id = %id,
        channel = send.channel.as_str(),
        one_time_device = send.one_time_device,
        "backup code sent"
    );
    Ok(OtpChallenge {
        challenge_id: id,
        channel: send.channel,
        destination: destination_hint,
        authentication_id: send.authentication_id,
        one_time_device: send.one_time_device,
        expires_at: challenge.expires_at,
    })
}

/// Sends a one-time passcode for a push authentication through one of its backup channels, to
/// the user's registered contact. Answer it with `POST /v1/authentications/{id}/otp`.
#[utoipa::path(post, path = "/v1/authentications/{authentication_id}/backup-codes", tag = "customer",
    params(("authentication_id" = String, Path, description = "The authentication")),
    request_body = SendBackupCode,
    responses((status = 201, body = OtpChallenge),
              (status = 404, description = "authentication_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "backup_channel_unavailable, already_answered", body = tessera_protocol::error::ErrorBody),
              (status = 410, description = "authentication_expired", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "rate_limited", body = tessera_protocol::error::ErrorBody),
              (status = 502, description = "delivery_failed", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn send_for_authentication(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SendBackupCode>,
) -> Result<(StatusCode, Json<OtpChallenge>), ApiError> {
    let record = crate::domain::authentication::load_for(&state, &auth.0.id, &id).await?;
    crate::domain::authentication::require_pending(&record)?;
    if !record.backup_channels.contains(&body.channel) {
        return Err(unavailable(
            "this authentication does not allow that backup channel",
        ));
    }
    let contacts = users::contacts(&state.db, &auth.0.id, &record.user_id)
        .await?
        .unwrap_or_default();
    let to = destination(&contacts, body.channel)
        .ok_or_else(|| unavailable("the user has no contact registered for that channel"))?;
    let sent = send_code(
        &state,
        Send {
            app: auth.0.id.clone(),
            application_name: auth.0.name.clone(),
            user: record.user_id.clone(),
            channel: body.channel,
            to,
            one_time_device: false,
            authentication_id: Some(record.id.clone()),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(sent)))
}

/// Sends a one-time passcode outside a push authentication: to the user's registered contact
/// (backup sign-in), or to a phone number or email address given for this one sign-in
/// (one-time device authentication).
#[utoipa::path(post, path = "/v1/users/{user_id}/otp-challenges", tag = "customer",
    params(("user_id" = String, Path, description = "The customer's id for the user")),
    request_body = CreateOtpChallenge,
    responses((status = 201, body = OtpChallenge),
              (status = 400, description = "invalid_request", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "user_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 409, description = "backup_channel_unavailable, mandatory_methods_missing", body = tessera_protocol::error::ErrorBody),
              (status = 429, description = "rate_limited", body = tessera_protocol::error::ErrorBody),
              (status = 502, description = "delivery_failed", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn create_challenge(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<CreateOtpChallenge>,
) -> Result<(StatusCode, Json<OtpChallenge>), ApiError> {
    let user_id = parse_user_id(&user_id)?;
    require_user(&state, &auth, &user_id).await?;
    let given = match (body.channel, body.phone, body.email) {
        (_, Some(_), Some(_)) => return Err(invalid("give a phone number or an email, not both")),
        (BackupChannel::Email, Some(_), None) => {
            return Err(invalid("the email channel needs an email address"));
        }
        (BackupChannel::Sms | BackupChannel::Voice, None, Some(_)) => {
            return Err(invalid("SMS and voice need a phone number"));
        }
        (_, Some(phone), None) => {
            if !valid_phone(&phone) {
                return Err(invalid(
                    "the phone number must be in E.164 form (+ and 8 to 15 digits)",
                ));
            }
            Some(phone)
        }
        (_, None, Some(email)) => {
            if !valid_email(&email) {
                return Err(invalid("the email address is not valid"));
            }
            Some(email)
        }
        (_, None, None) => None,
    };
    let one_time_device = given.is_some();
    let to = match given {
        Some(to) => to,
        None => {
            let policy = applications::otp_policy(&state.db, &auth.0.id).await?;
            if !policy.backup_channels.contains(&body.channel) {
                return Err(unavailable(
                    "that channel is not one of the application's backup channels",
                ));
            }
            let contacts = users::contacts(&state.db, &auth.0.id, &user_id)
                .await?
                .unwrap_or_default();
            destination(&contacts, body.channel)
                .ok_or_else(|| unavailable("the user has no contact registered for that channel"))?
        }
    };
    let sent = send_code(
        &state,
        Send {
            app: auth.0.id.clone(),
            application_name: auth.0.name.clone(),
            user: user_id,
            channel: body.channel,
            to,
            one_time_device,
            authentication_id: None,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(sent)))
}

/// Checks the code of a challenge sent with `POST /v1/users/{id}/otp-challenges`.
#[utoipa::path(post, path = "/v1/otp-challenges/{challenge_id}/verify", tag = "customer",
    params(("challenge_id" = String, Path, description = "The challenge")),
    request_body = VerifyOtpRequest,
    responses((status = 200, body = OtpChallengeVerified),
              (status = 400, description = "otp_invalid", body = tessera_protocol::error::ErrorBody),
              (status = 404, description = "otp_challenge_not_found", body = tessera_protocol::error::ErrorBody),
              (status = 423, description = "otp_locked", body = tessera_protocol::error::ErrorBody)))]
pub(crate) async fn verify_challenge(
    State(state): State<Ctx>,
    auth: AppAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<VerifyOtpRequest>,
) -> Result<Json<OtpChallengeVerified>, ApiError> {
    let not_found = || ApiError::new(ErrorCode::OtpChallengeNotFound, "no such challenge");
    let challenge = otp_challenges::get(&state.db, &id)
        .await?
        .filter(|c| c.application_id == auth.0.id)
        .ok_or_else(not_found)?;
    if challenge.authentication_id.is_some() {
        return Err(invalid(
            "this code answers an authentication: submit it to POST /v1/authentications/{id}/otp",
        ));
    }
    let app = &auth.0.id;
    let user = &challenge.user_id;
    super::otp::check_not_locked(&state, app, user).await?;
    let now = time::now();
    let max_attempts = i64::from(state.config.backup_code_attempts.max(1));
    let code = super::otp::normalize(&body.code);
    let spent = if challenge.used_at.is_some() {
        Some("this code was already used")
    } else if now >= challenge.expires_at {
        Some("this code expired; request a new one")
    } else if challenge.attempts >= max_attempts {
        Some("too many wrong tries for this code; request a new one")
    } else {
        None
    };
    if let Some(message) = spent {
        return Err(super::otp::refuse(&state, app, user, message).await);
    }
    if !code_matches(&challenge, &code) {
        otp_challenges::record_attempt(&state.db, &challenge.id).await?;
        return Err(super::otp::refuse(&state, app, user, "the code is wrong").await);
    }
    if !otp_challenges::mark_used(&state.db, &challenge.id, now, max_attempts).await? {
        return Err(super::otp::refuse(&state, app, user, "this code was already used").await);
    }
    otp::reset_failures(&state.db, app, user).await?;
    let mut attributes = channel_attributes(&state, challenge.channel, None);
    if challenge.one_time_device {
        attributes.insert("pingid.authentication.one.time.device".into(), json!(true));
    }
    tracing::info!(challenge_id = %challenge.id, "backup code accepted");
    Ok(Json(OtpChallengeVerified {
        challenge_id: challenge.id,
        user_id: challenge.user_id,
        attributes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_checked_and_masked() {
        assert!(valid_phone("+15551234567"));
        for bad in [
            "15551234567",
            "+0555123456",
            "+1555",
            "+1555123456789012",
            "+1555-123-4567",
        ] {
            assert!(!valid_phone(bad), "{bad}");
        }
        assert!(valid_email("alice@example.com"));
        assert!(!valid_email("alice"));
        assert!(!valid_email("alice@@example.com"));
        assert_eq!(mask_phone("+15551234567"), "+*******4567");
        assert_eq!(mask_email("alice@example.com"), "a****@example.com");
    }
}
