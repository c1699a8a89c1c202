//! Backup channels and one-time device authentication: passcodes sent by SMS, voice call or
//! email when no device of the user can be reached.
//!
//! - The customer registers the user's backup contacts ([`set_contacts`]).
//! - For a push authentication whose backup channels include the channel, a code is sent
//!   ([`send_for_authentication`]) and answered like an app passcode
//!   ([`super::otp::answer_authentication`]).
//! - Outside an authentication, [`create_challenge`] sends a code to the user's registered
//!   contact (a channel of the application's backup channels), or, given a phone number or email
//!   address, to that destination for this one sign-in (*one-time device*: nothing is
//!   registered, only a masked form is kept); [`verify_challenge`] checks it.
//!
//! Codes are 6 random digits stored as a salted SHA-256 digest, expire
//! ([`crate::ServerConfig::backup_code_ttl`]), are single use, allow
//! [`crate::ServerConfig::backup_code_attempts`] wrong tries, and are rate-limited per user and
//! channel. Each try takes one of its challenge's attempts (one conditional update) before the
//! code is compared, so guesses sent at once cannot compare more codes than that; a right code
//! gives its attempt back as it is used. Wrong codes also count towards the user's passcode
//! lockout. Codes travel through the [`Notifier`](super::ports::Notifier)s of [`super::ports`].

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tessera_protocol::api::{
    BackupChannel, BackupContacts, CreateOtpChallenge, OtpChallenge, OtpChallengeVerified,
};
use tessera_protocol::authentication::AuthenticationId;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, UserId};
use zeroize::Zeroizing;

use super::authentication::{accessing_attributes, load_for, require_pending};
use super::otp::{normalize, refuse, take_attempt};
use super::ports::{Notice, Notifier, NotifyError};
use super::users::require_user;
use super::{Ctx, DomainError};
use crate::store::applications::{self, Application};
use crate::store::otp;
use crate::store::otp_challenges::{self, Challenge};
use crate::store::users::{self, Contacts};

fn unavailable(message: &str) -> DomainError {
    DomainError::new(ErrorCode::BackupChannelUnavailable, message)
}

fn invalid(message: &str) -> DomainError {
    DomainError::invalid(message)
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

/// `contacts` as the API shows them: the phone's and the email's middle hidden.
pub(crate) fn masked(contacts: &Contacts) -> BackupContacts {
    BackupContacts {
        phone: contacts.phone.as_deref().map(mask_phone),
        email: contacts.email.as_deref().map(mask_email),
    }
}

const BAD_PHONE: &str = "the phone number must be in E.164 form (+ and 8 to 15 digits)";
const BAD_EMAIL: &str = "the email address is not valid";

/// Registers (replaces) the user's backup contacts; answers them masked.
pub(crate) async fn set_contacts(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    body: BackupContacts,
) -> Result<BackupContacts, DomainError> {
    require_user(ctx, app, user_id).await?;
    if body.phone.as_deref().is_some_and(|p| !valid_phone(p)) {
        return Err(invalid(BAD_PHONE));
    }
    if body.email.as_deref().is_some_and(|e| !valid_email(e)) {
        return Err(invalid(BAD_EMAIL));
    }
    let contacts = Contacts {
        phone: body.phone,
        email: body.email,
    };
    users::set_contacts(&ctx.db, app, user_id, &contacts).await?;
    tracing::info!(?contacts, "backup contacts registered");
    Ok(masked(&contacts))
}

/// The user's backup contacts, masked.
pub(crate) async fn get_contacts(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<BackupContacts, DomainError> {
    require_user(ctx, app, user_id).await?;
    let contacts = users::contacts(&ctx.db, app, user_id)
        .await?
        .unwrap_or_default();
    Ok(masked(&contacts))
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
    hex::encode(h.finalize())
}

/// Whether `code` is the challenge's code (constant-time over the digests).
pub(crate) fn code_matches(challenge: &Challenge, code: &str) -> bool {
    let d = digest(&challenge.code_salt, &challenge.id, code);
    bool::from(d.as_bytes().ct_eq(challenge.code_digest.as_bytes()))
}

/// The attributes of a passcode received through `channel`.
pub(crate) fn channel_attributes(
    ctx: &Ctx,
    channel: BackupChannel,
    accessing_ip: Option<&str>,
) -> BTreeMap<String, Value> {
    let mut a = BTreeMap::new();
    accessing_attributes(ctx, accessing_ip, &mut a);
    channel_method(channel, &mut a);
    a
}

/// The authentication type and `amr` of a code received through `channel`.
fn channel_method(channel: BackupChannel, a: &mut BTreeMap<String, Value>) {
    let p = "pingid.authentication.";
    a.insert(format!("{p}type"), json!(channel.authentication_type()));
    let amr = match channel {
        BackupChannel::Sms => json!(["sms", "otp"]),
        BackupChannel::Voice => json!(["tel", "otp"]),
        BackupChannel::Email => json!(["otp"]),
    };
    a.insert(format!("{p}amr"), amr);
}

/// The provider for `channel`: the server's SMTP notifier for email, the application's SMS
/// webhook for SMS and voice.
async fn notifier_for(
    ctx: &Ctx,
    app: &ApplicationId,
    channel: BackupChannel,
) -> Result<Arc<dyn Notifier>, DomainError> {
    match channel {
        BackupChannel::Email => ctx
            .email
            .clone()
            .ok_or_else(|| unavailable("this server has no email (SMTP) provider configured")),
        BackupChannel::Sms | BackupChannel::Voice => {
            let (url, secret) =
                applications::sms_webhook(&ctx.db, app)
                    .await?
                    .ok_or_else(|| {
                        unavailable(
                            "this application has no SMS and voice provider webhook configured",
                        )
                    })?;
            // Set before calls were signed: not called unsigned; the operator sets it again.
            let secret = secret.ok_or_else(|| {
                tracing::warn!(application_id = %app, "the SMS and voice webhook has no signing secret; set it again with set-sms-webhook");
                unavailable("this application's SMS and voice provider webhook must be set again (it has no signing secret)")
            })?;
            ctx.messages
                .sms_voice(url, secret)
                .ok_or_else(|| DomainError::new(ErrorCode::InternalError, "internal error"))
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
    /// The languages wanted for the message, most wanted first (English when none is shipped).
    languages: Vec<String>,
}

/// The masked destination shown for `to` on `channel`.
fn destination_hint(channel: BackupChannel, to: &str) -> String {
    match channel {
        BackupChannel::Email => mask_email(to),
        BackupChannel::Sms | BackupChannel::Voice => mask_phone(to),
    }
}

/// Rate-limits, stores the challenge (digest only), delivers the code; on a delivery failure the
/// challenge is removed again.
async fn send_code(ctx: &Ctx, send: Send) -> Result<OtpChallenge, DomainError> {
    let now = ctx.now();
    let notifier = notifier_for(ctx, &send.app, send.channel).await?;
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
    let ttl = i64::from(ctx.config.backup_code_ttl.max(1));
    let destination_hint = destination_hint(send.channel, &send.to);
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
    // The limit is taken with the insert: sends at once cannot all pass one count.
    let since = now - i64::from(ctx.config.backup_code_window);
    let limit = i64::from(ctx.config.backup_codes_per_window);
    if !otp_challenges::insert_within_limit(&ctx.db, &challenge, since, limit).await? {
        return Err(DomainError::new(
            ErrorCode::RateLimited,
            "too many codes were sent to this user through this channel; try again later",
        ));
    }
    let notice = Notice {
        channel: send.channel,
        to: send.to,
        code,
        application_name: send.application_name,
        application_id: send.app,
        user_id: send.user,
        expires_at: challenge.expires_at,
        valid_minutes: (ttl + 59) / 60,
        locale: crate::i18n::Catalog::shipped()
            .map(|catalog| catalog.negotiate(&send.languages, None))
            .unwrap_or_else(|_| crate::i18n::FALLBACK_LANGUAGE.to_string()),
    };
    if let Err(e) = notifier.send(&notice).await {
        otp_challenges::delete(&ctx.db, &id).await?;
        tracing::warn!(channel = send.channel.as_str(), error = %e, "backup code not delivered");
        return Err(DomainError::new(
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
/// the user's registered contact.
pub(crate) async fn send_for_authentication(
    ctx: &Ctx,
    app: &Application,
    id: &str,
    channel: BackupChannel,
) -> Result<OtpChallenge, DomainError> {
    let record = load_for(ctx, &app.id, id).await?;
    require_pending(&record)?;
    // The policy decided for the push judges the channel as it judges a backup challenge's
    // (a `require` must name it): `policy_denied` otherwise, with nothing sent.
    super::policy::StoredDecision::of(record.policy.as_deref())?
        .check_method(policy_method(channel))?;
    if !record.backup_channels.contains(&channel) {
        return Err(unavailable(
            "this authentication does not allow that backup channel",
        ));
    }
    let contacts = users::contacts(&ctx.db, &app.id, &record.user_id)
        .await?
        .unwrap_or_default();
    let to = destination(&contacts, channel)
        .ok_or_else(|| unavailable("the user has no contact registered for that channel"))?;
    // The language the request was written in (its signed `locale`), then the user's.
    let signed_locale = tessera_protocol::envelope::unverified_payload::<
        tessera_protocol::authentication::AuthenticationRequest,
    >(&record.signed_request)
    .ok()
    .and_then(|request| request.locale);
    let languages =
        super::users::wanted_languages(ctx, &app.id, &record.user_id, signed_locale.as_deref())
            .await;
    send_code(
        ctx,
        Send {
            app: app.id.clone(),
            application_name: app.name.clone(),
            user: record.user_id.clone(),
            channel,
            to,
            one_time_device: false,
            authentication_id: Some(record.id.clone()),
            languages,
        },
    )
    .await
}

/// The destination a challenge request gives (one-time device), checked against its channel;
/// `None` when it names none (the registered contact is used).
fn given_destination(body: CreateOtpChallenge) -> Result<Option<String>, DomainError> {
    match (body.channel, body.phone, body.email) {
        (_, Some(_), Some(_)) => Err(invalid("give a phone number or an email, not both")),
        (BackupChannel::Email, Some(_), None) => {
            Err(invalid("the email channel needs an email address"))
        }
        (BackupChannel::Sms | BackupChannel::Voice, None, Some(_)) => {
            Err(invalid("SMS and voice need a phone number"))
        }
        (_, Some(phone), None) => {
            if !valid_phone(&phone) {
                return Err(invalid(BAD_PHONE));
            }
            Ok(Some(phone))
        }
        (_, None, Some(email)) => {
            if !valid_email(&email) {
                return Err(invalid(BAD_EMAIL));
            }
            Ok(Some(email))
        }
        (_, None, None) => Ok(None),
    }
}

/// Sends a one-time passcode outside a push authentication: to the user's registered contact
/// (backup sign-in), or to a phone number or email address given for this one sign-in
/// (one-time device authentication).
pub(crate) async fn create_challenge(
    ctx: &Ctx,
    app: &Application,
    user_id: UserId,
    body: CreateOtpChallenge,
) -> Result<OtpChallenge, DomainError> {
    require_user(ctx, &app.id, &user_id).await?;
    let channel = body.channel;
    super::methods::require_mandatory(ctx, &app.id, &user_id).await?;
    super::policy::check_path(
        ctx,
        &app.id,
        &user_id,
        tessera_protocol::policy::RequestKind::BackupCode,
        Some(policy_method(channel)),
        None,
    )
    .await?;
    let Some(to) = given_destination(body)? else {
        let policy = applications::otp_policy(&ctx.db, &app.id).await?;
        if !policy.backup_channels.contains(&channel) {
            return Err(unavailable(
                "that channel is not one of the application's backup channels",
            ));
        }
        return send_to_contact(ctx, app, &user_id, channel).await;
    };
    send_code(
        ctx,
        Send {
            app: app.id.clone(),
            application_name: app.name.clone(),
            languages: super::users::wanted_languages(ctx, &app.id, &user_id, None).await,
            user: user_id,
            channel,
            to,
            one_time_device: true,
            authentication_id: None,
        },
    )
    .await
}

/// Sends a one-time passcode through `channel` to the user's registered contact, outside a push
/// authentication. The caller decided that the channel is offered: the application's backup
/// channels (a backup sign-in), or a flow's own options (the connector's `SMSBackup`,
/// `phoneBackup`, `emailBackup`).
pub(crate) async fn send_to_contact(
    ctx: &Ctx,
    app: &Application,
    user_id: &UserId,
    channel: BackupChannel,
) -> Result<OtpChallenge, DomainError> {
    let contacts = users::contacts(&ctx.db, &app.id, user_id)
        .await?
        .unwrap_or_default();
    let to = destination(&contacts, channel)
        .ok_or_else(|| unavailable("the user has no contact registered for that channel"))?;
    send_code(
        ctx,
        Send {
            app: app.id.clone(),
            application_name: app.name.clone(),
            user: user_id.clone(),
            channel,
            to,
            one_time_device: false,
            authentication_id: None,
            languages: super::users::wanted_languages(ctx, &app.id, user_id, None).await,
        },
    )
    .await
}

/// The refusal of a code whose challenge has no attempt left.
const TOO_MANY_TRIES: &str = "too many wrong tries for this code; request a new one";

/// Why a challenge can no longer be answered at `now`, if it cannot.
fn spent(challenge: &Challenge, now: i64, max_attempts: i64) -> Option<&'static str> {
    if challenge.used_at.is_some() {
        Some("this code was already used")
    } else if now >= challenge.expires_at {
        Some("this code expired; request a new one")
    } else if challenge.attempts >= max_attempts {
        Some(TOO_MANY_TRIES)
    } else {
        None
    }
}

/// Checks the code of a challenge sent with [`create_challenge`].
pub(crate) async fn verify_challenge(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
    code: &str,
) -> Result<OtpChallengeVerified, DomainError> {
    let not_found = || DomainError::new(ErrorCode::OtpChallengeNotFound, "no such challenge");
    let challenge = otp_challenges::get(&ctx.db, id)
        .await?
        .filter(|c| &c.application_id == app)
        .ok_or_else(not_found)?;
    if challenge.authentication_id.is_some() {
        return Err(invalid(
            "this code answers an authentication: submit it to POST /v1/authentications/{id}/otp",
        ));
    }
    let user = &challenge.user_id;
    super::policy::check_path(
        ctx,
        app,
        user,
        tessera_protocol::policy::RequestKind::BackupCode,
        Some(policy_method(challenge.channel)),
        Some(challenge.id.as_str()),
    )
    .await?;
    let attempt = take_attempt(ctx, app, user).await?;
    let now = ctx.now();
    let max_attempts = i64::from(ctx.config.backup_code_attempts.max(1));
    let code = normalize(code);
    if let Some(message) = spent(&challenge, now, max_attempts) {
        return Err(refuse(ctx, &attempt, message));
    }
    // The challenge's attempt is taken (one conditional update) before the code is compared:
    // the `attempts` read above may be stale, and guesses sent at once would all pass it.
    if !otp_challenges::take_attempt(&ctx.db, &challenge.id, now, max_attempts).await? {
        let message = otp_challenges::get(&ctx.db, &challenge.id)
            .await?
            .and_then(|c| spent(&c, now, max_attempts))
            .unwrap_or(TOO_MANY_TRIES);
        return Err(refuse(ctx, &attempt, message));
    }
    if !code_matches(&challenge, &code) {
        // Its attempt stays counted.
        return Err(refuse(ctx, &attempt, "the code is wrong"));
    }
    // Used with the attempt it took given back: a right code that took the last attempt is
    // still accepted, once.
    if !otp_challenges::mark_used(ctx.db.writer(), &challenge.id, now, max_attempts).await? {
        return Err(refuse(ctx, &attempt, "this code was already used"));
    }
    otp::reset_failures(&ctx.db, app, user).await?;
    let mut attributes = channel_attributes(ctx, challenge.channel, None);
    if challenge.one_time_device {
        attributes.insert("pingid.authentication.one.time.device".into(), json!(true));
    }
    tracing::info!(challenge_id = %challenge.id, "backup code accepted");
    Ok(OtpChallengeVerified {
        challenge_id: challenge.id,
        user_id: challenge.user_id,
        attributes,
    })
}

/// The policy method a backup channel is.
pub(crate) fn policy_method(channel: BackupChannel) -> tessera_protocol::policy::PolicyMethod {
    use tessera_protocol::policy::PolicyMethod;
    match channel {
        BackupChannel::Sms => PolicyMethod::Sms,
        BackupChannel::Voice => PolicyMethod::Voice,
        BackupChannel::Email => PolicyMethod::Email,
    }
}

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(code: &str) -> Challenge {
        let (id, salt) = ("otc_test".to_string(), "salt".to_string());
        Challenge {
            code_digest: digest(&salt, &id, code),
            id,
            code_salt: salt,
            application_id: ApplicationId::generate(),
            user_id: "alice".parse().unwrap(),
            authentication_id: None,
            channel: BackupChannel::Sms,
            destination_hint: mask_phone("+15551234567"),
            one_time_device: false,
            attempts: 0,
            created_at: 100,
            expires_at: 400,
            used_at: None,
        }
    }

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
        assert_eq!(mask_email("nobody"), "****");
        assert_eq!(
            destination_hint(BackupChannel::Voice, "+15551234567"),
            "+*******4567"
        );
        assert_eq!(
            destination_hint(BackupChannel::Email, "bob@example.com"),
            "b****@example.com"
        );
    }

    #[test]
    fn a_challenge_matches_only_its_code_and_is_spent_by_use_expiry_or_tries() {
        let c = challenge("123456");
        assert!(code_matches(&c, "123456"));
        assert!(!code_matches(&c, "123457"));
        assert!(!code_matches(&c, ""));
        assert_eq!(spent(&c, 200, 3), None);
        assert!(spent(&c, 400, 3).is_some(), "expired");
        assert!(
            spent(
                &Challenge {
                    attempts: 3,
                    ..challenge("1")
                },
                200,
                3
            )
            .is_some(),
            "tries"
        );
        assert!(
            spent(
                &Challenge {
                    used_at: Some(150),
                    ..challenge("1")
                },
                200,
                3
            )
            .is_some(),
            "used"
        );
    }

    #[test]
    fn destinations_given_must_fit_the_channel() {
        let body = |channel, phone: Option<&str>, email: Option<&str>| CreateOtpChallenge {
            channel,
            phone: phone.map(str::to_string),
            email: email.map(str::to_string),
        };
        assert_eq!(
            given_destination(body(BackupChannel::Sms, Some("+15551234567"), None)).unwrap(),
            Some("+15551234567".into())
        );
        assert_eq!(
            given_destination(body(BackupChannel::Email, None, None)).unwrap(),
            None
        );
        assert!(given_destination(body(BackupChannel::Email, Some("+15551234567"), None)).is_err());
        assert!(given_destination(body(BackupChannel::Voice, None, Some("a@b.example"))).is_err());
        assert!(given_destination(body(BackupChannel::Sms, Some("5551234567"), None)).is_err());
        assert!(
            given_destination(body(
                BackupChannel::Sms,
                Some("+15551234567"),
                Some("a@b.c")
            ))
            .is_err()
        );
    }

    #[test]
    fn channel_codes_report_their_method() {
        let mut a = BTreeMap::new();
        channel_method(BackupChannel::Voice, &mut a);
        assert_eq!(a["pingid.authentication.amr"], json!(["tel", "otp"]));
        let mut a = BTreeMap::new();
        channel_method(BackupChannel::Sms, &mut a);
        assert_eq!(a["pingid.authentication.amr"], json!(["sms", "otp"]));
    }
}
