//! One-time passcodes checked by the server.
//!
//! - **From the user's devices**: `MOBILE_APP_OTP` (TOTP from the seed each enrollment received
//!   at pairing) and OATH tokens registered with a known seed (`DESKTOP_OTP`, `OATH_TOKEN`,
//!   `YUBIKEY` in OATH mode, `AUTHENTICATOR_APP`): TOTP with a drift window of a step either
//!   side, every code single use (only a later time step than the last accepted); HOTP with a
//!   look-ahead window whose match resynchronises the counter.
//! - **For a push authentication**: the app's code when the authentication has "use code" or
//!   OTP fallback in force, or a backup code sent for it ([`super::backup`]). An accepted code
//!   ends the authentication through the one outcome path, like a signed answer, and is used up
//!   in the same transaction ([`outcome::record_taking`]). A code is compared with a backup
//!   code's challenge only after taking one of the challenge's attempts (one conditional
//!   update), so guesses sent at once are compared no more times than a challenge allows.
//! - **OATH tokens**: a user has at most `MAX_TOKENS_PER_USER`; a registration counts them and
//!   stores the new one in one write under the user's row lock (`store::users::lock`), so
//!   registrations at once stop at the cap, and a user deleted meanwhile is left no token.
//!
//! Consecutive failures, wherever they happen, lock the user's passcode checks until the
//! customer resets them. Seeds are never returned or logged.

use std::collections::BTreeMap;

use rand::RngCore;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tessera_protocol::api::{
    AuthenticationStatus, OtpToken, OtpTokenKind, OtpTokenList, OtpVerified, RegisterOtpToken,
};
use tessera_protocol::authentication::{AuthenticationId, AuthenticationState};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::otp::{DIGITS, OtpHash, PERIOD_SECONDS, decode_base32, hotp};
use zeroize::Zeroizing;

use super::authentication::{accessing_attributes, load_for, require_pending};
use super::outcome::{self, Ending, Take, Taken};
use super::users::{require_user, user_not_found};
use super::{Ctx, DomainError};
use crate::store::authentications::{self, Authentication};
use crate::store::otp::{self, EnrollmentSeed, OathToken, PasscodeSpend, TokenInsert};
use crate::store::{enrollments, otp_challenges};
use tessera_protocol::policy::{PolicyMethod, RequestKind};

/// Most OATH tokens one user may have.
const MAX_TOKENS_PER_USER: i64 = 20;

fn internal() -> DomainError {
    DomainError::new(ErrorCode::InternalError, "internal error")
}

/// `otp_not_allowed`: the authentication takes no passcode now.
fn not_allowed() -> DomainError {
    DomainError::new(
        ErrorCode::OtpNotAllowed,
        "this authentication does not accept a passcode (no use-code, no OTP fallback in force, no backup code sent)",
    )
}

/// `otp_locked`: the user's passcode checks are locked.
pub(crate) fn locked() -> DomainError {
    DomainError::new(
        ErrorCode::OtpLocked,
        "too many wrong passcodes; ask the service to unlock passcode sign-in",
    )
}

/// The code as typed, without spaces.
pub(crate) fn normalize(code: &str) -> String {
    code.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Whether `code` is `digits` ASCII digits.
fn well_formed(code: &str, digits: u32) -> bool {
    code.len() == digits as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// Constant-time comparison of an expected code and a submitted one.
fn matches(expected: &str, code: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
}

/// One passcode attempt, taken (counted) before the code is compared.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// The user's count of unreset attempts, this one included.
    failures: i64,
    /// The application.
    app: ApplicationId,
    /// The user.
    user: UserId,
}

/// Takes one passcode attempt for the user with one conditional update, before any code is
/// compared: refused with `otp_locked` once the limit is reached, so concurrent guesses can never
/// check more codes than the limit. A success resets the count; a wrong code leaves it counted.
pub(crate) async fn take_attempt(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Attempt, DomainError> {
    let max = i64::from(ctx.config.otp_max_failures.max(1));
    match otp::take_attempt(&ctx.db, app, user, max).await? {
        Some(failures) => Ok(Attempt {
            failures,
            app: app.clone(),
            user: user.clone(),
        }),
        None => Err(locked()),
    }
}

/// A wrong passcode (its attempt is already counted): `otp_invalid` with `message`, or
/// `otp_locked` when it was the last attempt allowed.
pub(crate) fn refuse(ctx: &Ctx, attempt: &Attempt, message: &str) -> DomainError {
    let max = i64::from(ctx.config.otp_max_failures.max(1));
    tracing::info!(failures = attempt.failures, "one-time passcode refused");
    if attempt.failures >= max {
        if attempt.failures == max {
            // The attempt that locked the user out: recorded once, after this answer.
            let event =
                super::audit::Event::new("lockout", super::audit::Actor::Anonymous, "locked")
                    .app(&attempt.app)
                    .user(&attempt.user)
                    .details(
                        serde_json::json!({ "failures": attempt.failures, "method": "passcode" }),
                    );
            let ctx = ctx.clone();
            tokio::spawn(async move { super::audit::record(&ctx, event).await });
        }
        locked()
    } else {
        DomainError::new(ErrorCode::OtpInvalid, message)
    }
}

/// What produced an accepted device passcode.
pub(crate) enum DeviceSource {
    /// An enrollment's provisioned seed.
    Enrollment(EnrollmentId),
    /// A registered OATH token.
    Token {
        /// Its id.
        token_id: String,
        /// Its kind.
        kind: OtpTokenKind,
    },
}

impl DeviceSource {
    /// The policy method a code from this source is: `mobile_passcode` for an enrollment's
    /// seed, `oath` for a registered token.
    fn method(&self) -> PolicyMethod {
        match self {
            DeviceSource::Enrollment(_) => PolicyMethod::MobilePasscode,
            DeviceSource::Token { .. } => PolicyMethod::Oath,
        }
    }
}

/// How checking a code against the user's devices went.
pub(crate) enum DeviceMatch {
    /// Accepted: the code and how to use it up. [`find_device_code`] leaves it unspent (the
    /// caller spends it in the write that records what it approves);
    /// [`match_device_code`] has spent it.
    Accepted(DeviceSource, PasscodeSpend),
    /// It was right once, but is already used.
    Replayed,
    /// It matches nothing.
    NoMatch,
    /// The user has no device that makes passcodes.
    NoSources,
}

/// The TOTP time steps (of `period` seconds) a code made at `now` may be from: `drift` steps
/// either side (none before step 0).
fn steps_around(now: i64, period: u32, drift: i64) -> impl Iterator<Item = (i64, u64)> {
    let now_step = now.max(0) / i64::from(period.max(1));
    ((now_step - drift)..=(now_step + drift))
        .filter_map(|step| u64::try_from(step).ok().map(|u| (step, u)))
}

/// The time step of the enrollment seed `code` was made at, among the steps around `now`.
fn seed_matches(
    seed: &EnrollmentSeed,
    code: &str,
    now: i64,
    drift: i64,
) -> Result<Vec<i64>, DomainError> {
    let mut found = Vec::new();
    if !well_formed(code, DIGITS) {
        return Ok(found);
    }
    for (step, step_u) in steps_around(now, PERIOD_SECONDS, drift) {
        let expected = hotp(&seed.seed, OtpHash::Sha1, DIGITS, step_u).map_err(|_| internal())?;
        if matches(&expected, code) {
            found.push(step);
        }
    }
    Ok(found)
}

/// The counter of an HOTP token `code` was made with, within `look_ahead` of its counter.
fn hotp_match(
    token: &OathToken,
    counter: i64,
    code: &str,
    look_ahead: i64,
) -> Result<Option<i64>, DomainError> {
    for c in counter..=counter.saturating_add(look_ahead) {
        let Ok(c_u) = u64::try_from(c) else {
            continue;
        };
        let expected =
            hotp(&token.seed, token.algorithm.hash(), token.digits, c_u).map_err(|_| internal())?;
        if matches(&expected, code) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The time steps of a TOTP token `code` was made at, among the steps around `now`.
fn totp_token_matches(
    token: &OathToken,
    period: u32,
    code: &str,
    now: i64,
    drift: i64,
) -> Result<Vec<i64>, DomainError> {
    let mut found = Vec::new();
    for (step, step_u) in steps_around(now, period, drift) {
        let expected = hotp(&token.seed, token.algorithm.hash(), token.digits, step_u)
            .map_err(|_| internal())?;
        if matches(&expected, code) {
            found.push(step);
        }
    }
    Ok(found)
}

/// Checks `code` against the user's enrollment seeds and OATH tokens, and uses an accepted
/// one up at once (one conditional update: of two racing uses, one takes it).
pub(crate) async fn match_device_code(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<DeviceMatch, DomainError> {
    Ok(match find_device_code(ctx, app, user, code).await? {
        DeviceMatch::Accepted(source, spend) => {
            if spend.take(ctx.db.writer()).await? {
                DeviceMatch::Accepted(source, spend)
            } else {
                DeviceMatch::Replayed
            }
        }
        other => other,
    })
}

/// Checks `code` against the user's enrollment seeds and OATH tokens, without using it up: an
/// accepted code comes with the [`PasscodeSpend`] that takes it (its time step, later than the
/// last accepted, or its HOTP counter).
pub(crate) async fn find_device_code(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<DeviceMatch, DomainError> {
    let (seeds, tokens) = tokio::try_join!(
        otp::seeds_for_user(&ctx.db, app, user),
        otp::tokens_for_user(&ctx.db, app, user),
    )?;
    if seeds.is_empty() && tokens.is_empty() {
        return Ok(DeviceMatch::NoSources);
    }
    let now = ctx.now().max(0);
    let drift = i64::from(ctx.config.otp_drift_steps);
    let mut replayed = false;
    for s in &seeds {
        for step in seed_matches(s, code, now, drift)? {
            if step > s.last_step {
                let spend = PasscodeSpend::EnrollmentStep {
                    enrollment: s.enrollment_id.clone(),
                    step,
                };
                return Ok(DeviceMatch::Accepted(
                    DeviceSource::Enrollment(s.enrollment_id.clone()),
                    spend,
                ));
            }
            replayed = true;
        }
    }
    for t in &tokens {
        if !well_formed(code, t.digits) {
            continue;
        }
        match (t.counter, t.period) {
            (Some(counter), _) => {
                let look_ahead = i64::from(ctx.config.hotp_look_ahead);
                // A counter at the end of its range has no next value to move to: such a code
                // cannot be spent (registrations keep counters far below it).
                if let Some(next) =
                    hotp_match(t, counter, code, look_ahead)?.and_then(|c| c.checked_add(1))
                {
                    let spend = PasscodeSpend::TokenCounter {
                        token_id: t.token_id.clone(),
                        expected: counter,
                        next,
                    };
                    return Ok(DeviceMatch::Accepted(token_source(t), spend));
                }
            }
            (None, Some(period)) => {
                for step in totp_token_matches(t, period, code, now, drift)? {
                    if step > t.last_step {
                        let spend = PasscodeSpend::TokenStep {
                            token_id: t.token_id.clone(),
                            step,
                        };
                        return Ok(DeviceMatch::Accepted(token_source(t), spend));
                    }
                    replayed = true;
                }
            }
            (None, None) => {}
        }
    }
    Ok(if replayed {
        DeviceMatch::Replayed
    } else {
        DeviceMatch::NoMatch
    })
}

fn token_source(t: &OathToken) -> DeviceSource {
    DeviceSource::Token {
        token_id: t.token_id.clone(),
        kind: t.kind,
    }
}

/// The `pingid.authentication.*` attributes of a device passcode.
pub(crate) async fn device_attributes(
    ctx: &Ctx,
    source: &DeviceSource,
    accessing_ip: Option<&str>,
) -> Result<BTreeMap<String, Value>, DomainError> {
    let p = "pingid.authentication.";
    let mut attributes = BTreeMap::new();
    accessing_attributes(ctx, accessing_ip, &mut attributes);
    match source {
        DeviceSource::Enrollment(enrollment_id) => {
            attributes.insert(format!("{p}type"), json!("MOBILE_APP_OTP"));
            if let Some(device) = enrollments::by_id(&ctx.db, enrollment_id).await? {
                super::authentication::insert_device_attributes(&mut attributes, &device);
            }
            attributes.insert(format!("{p}amr"), json!(["otp"]));
        }
        DeviceSource::Token { kind, .. } => {
            attributes.insert(format!("{p}type"), json!(kind.authentication_type()));
            attributes.insert(format!("{p}amr"), token_amr(*kind));
        }
    }
    Ok(attributes)
}

/// The `amr` of a token's passcode: a YubiKey is also a hardware key.
fn token_amr(kind: OtpTokenKind) -> Value {
    if kind == OtpTokenKind::Yubikey {
        json!(["hwk", "otp"])
    } else {
        json!(["otp"])
    }
}

/// Checks a one-time passcode from one of the user's devices (the app, or a registered OATH
/// token).
pub(crate) async fn verify(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: UserId,
    code: &str,
) -> Result<OtpVerified, DomainError> {
    require_user(ctx, app, &user_id).await?;
    super::methods::require_mandatory(ctx, app, &user_id).await?;
    // The policy (kind `passcode`) decides before an attempt is taken; which method the code
    // came from is checked once it is known.
    let decided =
        super::policy::check_path(ctx, app, &user_id, RequestKind::Passcode, None, None).await?;
    let attempt = take_attempt(ctx, app, &user_id).await?;
    let code = normalize(code);
    let source = match match_device_code(ctx, app, &user_id, &code).await? {
        DeviceMatch::Accepted(source, _spent) => source,
        DeviceMatch::NoSources => {
            otp::refund_attempt(&ctx.db, app, &user_id).await?;
            return Err(DomainError::new(
                ErrorCode::NoDevice,
                "the user has no device that makes passcodes",
            ));
        }
        DeviceMatch::Replayed => {
            return Err(refuse(
                ctx,
                &attempt,
                "this passcode was already used; wait for the next one",
            ));
        }
        DeviceMatch::NoMatch => {
            return Err(refuse(ctx, &attempt, "the passcode is wrong or expired"));
        }
    };
    otp::reset_failures(&ctx.db, app, &user_id).await?;
    if let Some(decided) = &decided
        && decided.decision.effect == tessera_protocol::policy::PolicyEffect::Require
    {
        decided.check_method(source.method())?;
    }
    let attributes = device_attributes(ctx, &source, None).await?;
    let (enrollment_id, token_id) = match source {
        DeviceSource::Enrollment(e) => (Some(e), None),
        DeviceSource::Token { token_id, .. } => (None, Some(token_id)),
    };
    tracing::info!(
        enrollment_id = ?enrollment_id,
        token_id = ?token_id,
        "one-time passcode accepted"
    );
    Ok(OtpVerified {
        user_id,
        enrollment_id,
        token_id,
        attributes,
    })
}

/// Clears the user's count of wrong passcodes (unlocks passcode sign-in).
pub(crate) async fn reset_failures(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<(), DomainError> {
    require_user(ctx, app, user_id).await?;
    otp::reset_failures(&ctx.db, app, user_id).await?;
    Ok(())
}

/// Answers a push authentication with a one-time passcode: the app's (or a registered token's)
/// when "use code" or OTP fallback is in force, or a backup code sent for it. An accepted code
/// ends the authentication as approved with the passcode's attributes, through
/// [`outcome::record_taking`] (waiters wake, follow-ups run): the code is used up in the same
/// transaction, so it is spent only when it approves, and the authentication keeps the code's
/// digest ([`passcode_digest`]). A copy of that code for the same authentication (the same
/// form sent twice, or a retry after a lost answer) is answered with the approval: it is not
/// refused as spent, nor counted as a wrong passcode.
pub(crate) async fn answer_authentication(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
    code: &str,
) -> Result<AuthenticationStatus, DomainError> {
    let record = load_for(ctx, app, id).await?;
    let code = normalize(code);
    let digest = passcode_digest(&record.id, &code);
    if let Err(ended) = require_pending(&record) {
        return match approval_by(ctx, &record, &digest).await? {
            Some(status) => Ok(status),
            None => Err(ended),
        };
    }
    let now = ctx.now();
    let user = &record.user_id;
    // The policy decided for the push names the methods that may answer it, as on the
    // standalone paths (`verify`, backup challenges): the app's codes need `mobile_passcode`
    // (an enrollment's seed) or `oath` (a token), a backup code its channel.
    let decided = super::policy::StoredDecision::of(record.policy.as_deref())?;
    let app_codes =
        decided.allows(PolicyMethod::MobilePasscode) || decided.allows(PolicyMethod::Oath);
    let app_code = app_codes && record.otp_reason(now).is_some();
    let max_attempts = i64::from(ctx.config.backup_code_attempts.max(1));
    let mut open =
        otp_challenges::open_for_authentication(&ctx.db, &record.id, now, max_attempts).await?;
    // A challenge through a channel the policy leaves out (none is sent for one) is not
    // compared.
    let left_out = open
        .iter()
        .map(|c| super::backup::policy_method(c.channel))
        .find(|m| !decided.allows(*m));
    open.retain(|c| decided.allows(super::backup::policy_method(c.channel)));
    if !app_code && open.is_empty() {
        // Its challenge may have been used by a copy of this code since the request was read:
        // that copy's approval is the answer.
        let current = load_for(ctx, app, id).await?;
        if let Some(status) = approval_by(ctx, &current, &digest).await? {
            return Ok(status);
        }
        // A code the policy leaves out is refused as the policy's (`policy_denied`), before
        // an attempt is taken.
        if let Some(method) = left_out {
            decided.check_method(method)?;
        }
        if !app_codes {
            decided.check_method(PolicyMethod::MobilePasscode)?;
        }
        return Err(not_allowed());
    }
    let attempt = take_attempt(ctx, app, user).await?;
    // The code is compared only with the challenges whose attempt it took (one conditional
    // update each, before comparing): the count read with them above would let guesses sent at
    // once all be compared, more of them than a challenge allows.
    let mut challenges = Vec::with_capacity(open.len());
    for c in open {
        if otp_challenges::take_attempt(&ctx.db, &c.id, now, max_attempts).await? {
            challenges.push(c);
        }
    }
    if !app_code && challenges.is_empty() {
        // Their attempts were used up since they were read: by a copy of this code that
        // approved the request (it is told that approval), or by guesses (answered as if read
        // after those, when nothing is compared and no attempt of the user's is counted).
        // On SQLite that copy may be an earlier member of the write group this attempt joined,
        // not committed yet: its approval is waited for (it is announced once committed), two
        // seconds at most.
        let current = super::events::wait_for(
            &ctx.events,
            super::events::Topic::Authentication(record.id.to_string()),
            std::time::Duration::from_secs(2),
            || load_for(ctx, app, id),
            |current: &Authentication| current.state != AuthenticationState::Pending,
        )
        .await?;
        otp::refund_attempt(&ctx.db, app, user).await?;
        if let Some(status) = approval_by(ctx, &current, &digest).await? {
            return Ok(status);
        }
        return Err(not_allowed());
    }
    let mut accepted = challenges
        .iter()
        .find(|c| super::backup::code_matches(c, &code))
        .map(|c| {
            let spend = PasscodeSpend::Challenge {
                id: c.id.clone(),
                now,
                max_attempts,
            };
            let attributes =
                super::backup::channel_attributes(ctx, c.channel, record.accessing_ip.as_deref());
            (spend, attributes)
        });
    let mut replayed = false;
    if accepted.is_none() && app_code {
        match find_device_code(ctx, app, user, &code).await? {
            DeviceMatch::Accepted(source, spend) => {
                if let Err(refused) = decided.check_method(source.method()) {
                    // A right code from a source the policy leaves out: refused as the
                    // policy's, nothing spent, and the attempts it took given back.
                    otp::refund_attempt(&ctx.db, app, user).await?;
                    for c in &challenges {
                        otp_challenges::give_back_attempt(&ctx.db, &c.id).await?;
                    }
                    return Err(refused);
                }
                let attributes =
                    device_attributes(ctx, &source, record.accessing_ip.as_deref()).await?;
                accepted = Some((spend, attributes));
            }
            DeviceMatch::Replayed => replayed = true,
            DeviceMatch::NoMatch | DeviceMatch::NoSources => {}
        }
    }
    let Some((spend, attributes)) = accepted else {
        if replayed && let Some(status) = copy_answered(ctx, app, &record, &digest).await? {
            return Ok(status);
        }
        // The challenges' attempts were taken before comparing: they stay counted.
        let message = if replayed {
            "this passcode was already used"
        } else {
            "the passcode is wrong or expired"
        };
        return Err(refuse(ctx, &attempt, message));
    };
    let text = serde_json::to_string(&attributes).map_err(|_| internal())?;
    let ending = Ending::Passcode {
        attributes: &text,
        code_digest: Some(&digest),
    };
    let current =
        match outcome::record_taking(ctx, &record.id, Take::Passcode(&spend), ending).await? {
            Taken::Recorded(recorded) => {
                otp::reset_failures(&ctx.db, app, user).await?;
                *recorded
            }
            Taken::NotRecorded => {
                // Answered or expired meanwhile: the passcode is not spent (it was right, so its
                // attempt is not counted either, nor are the challenges' it took); a copy of it
                // may be what answered.
                otp::refund_attempt(&ctx.db, app, user).await?;
                for c in &challenges {
                    otp_challenges::give_back_attempt(&ctx.db, &c.id).await?;
                }
                let current = load_for(ctx, app, id).await?;
                if let Some(status) = approval_by(ctx, &current, &digest).await? {
                    return Ok(status);
                }
                require_pending(&current)?;
                current
            }
            Taken::UsedUp => {
                // Spent since it was read: by a copy of it that approved this authentication, or by
                // another use.
                if let Some(status) = copy_answered(ctx, app, &record, &digest).await? {
                    return Ok(status);
                }
                // The challenges' attempts, taken before comparing, stay counted.
                return Err(refuse(ctx, &attempt, "this passcode was already used"));
            }
        };
    tracing::info!(authentication_id = %current.id, "authentication approved with a passcode");
    Ok(current.status_at(ctx.now()))
}

/// The digest of passcode `code` answering authentication `id`, as the authentication keeps it
/// once the code approves it: SHA-256 over a label, the id and the code. The code is spent by
/// then (its step, counter or challenge used up), so the digest names nothing that still works.
fn passcode_digest(id: &AuthenticationId, code: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tessera/passcode-answer/v1\0");
    h.update(id.as_str().as_bytes());
    h.update(b"\0");
    h.update(code.as_bytes());
    hex::encode(h.finalize())
}

/// The status of `record` if the passcode (or recovery code) with `digest` approved it (a copy
/// of it, answered again).
pub(crate) async fn approval_by(
    ctx: &Ctx,
    record: &Authentication,
    digest: &str,
) -> Result<Option<AuthenticationStatus>, DomainError> {
    if record.state != AuthenticationState::Approved
        || !authentications::approved_by_passcode(&ctx.db, &record.id, digest).await?
    {
        return Ok(None);
    }
    Ok(Some(record.status_at(ctx.now())))
}

/// A spent passcode (or recovery code) with `digest` for `record`, read while it was pending:
/// if a copy of it approved the authentication meanwhile, that approval (and the attempt this
/// copy took is given back); `None` when it was spent elsewhere.
pub(crate) async fn copy_answered(
    ctx: &Ctx,
    app: &ApplicationId,
    record: &Authentication,
    digest: &str,
) -> Result<Option<AuthenticationStatus>, DomainError> {
    let current = load_for(ctx, app, record.id.as_str()).await?;
    let status = approval_by(ctx, &current, digest).await?;
    if status.is_some() {
        otp::refund_attempt(&ctx.db, app, &record.user_id).await?;
    }
    Ok(status)
}

/// The seed of a registered token from its base32 text (spaces and dashes ignored).
fn token_seed(secret: &str) -> Result<Zeroizing<Vec<u8>>, DomainError> {
    let secret: Zeroizing<String> = Zeroizing::new(
        secret
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
    );
    let seed = decode_base32(&secret)
        .ok_or_else(|| DomainError::invalid("the secret is not valid base32"))?;
    if !(16..=64).contains(&seed.len()) {
        return Err(DomainError::invalid(
            "the secret must be 16 to 64 bytes (128 to 512 bits)",
        ));
    }
    Ok(seed)
}

/// The largest HOTP counter a token may be registered with: far beyond any device's (one code
/// a second for 285 million years), and far enough below `i64::MAX` that the look-ahead and
/// the spent code's next counter never overflow.
const MAX_HOTP_COUNTER: i64 = 1 << 53;

/// The digits, TOTP period and HOTP counter a registration asks for, checked.
fn token_shape(body: &RegisterOtpToken) -> Result<(u32, Option<u32>, Option<i64>), DomainError> {
    let invalid = DomainError::invalid;
    let digits = body.digits.unwrap_or(6);
    if !(6..=8).contains(&digits) {
        return Err(invalid("digits must be 6, 7 or 8"));
    }
    let (period, counter) = match (body.period, body.counter) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give a period (TOTP) or a counter (HOTP), not both",
            ));
        }
        (None, Some(counter)) => (
            None,
            Some(
                i64::try_from(counter)
                    .ok()
                    .filter(|c| *c <= MAX_HOTP_COUNTER)
                    .ok_or_else(|| invalid("the counter is too large"))?,
            ),
        ),
        (period, None) => {
            let period = period.unwrap_or(30);
            if !(10..=300).contains(&period) {
                return Err(invalid("the period must be 10 to 300 seconds"));
            }
            (Some(period), None)
        }
    };
    Ok((digits, period, counter))
}

/// Registers an OATH token whose seed is known (desktop OTP, hardware token, YubiKey in OATH
/// mode, authenticator app). The seed is never returned.
pub(crate) async fn register_token(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    body: RegisterOtpToken,
) -> Result<OtpToken, DomainError> {
    let seed = token_seed(&body.secret)?;
    let (digits, period, counter) = token_shape(&body)?;
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let token = OathToken {
        token_id: format!("otk_{}", hex::encode(id)),
        kind: body.kind,
        seed,
        algorithm: body.algorithm,
        digits,
        period,
        counter,
        last_step: 0,
        created_at: ctx.now(),
    };
    // The user is looked up, their tokens counted and the token stored in one write that takes
    // its turn on the user: a count read before would let registrations at once all pass the
    // cap (each passcode check then compares more tokens, and a guess matches more of them),
    // and a lookup before would let a deletion in between leave the token to a later user of
    // the same id.
    match otp::insert_token_within_limit(&ctx.db, app, user_id, &token, MAX_TOKENS_PER_USER).await?
    {
        TokenInsert::Stored => {}
        TokenInsert::NoUser => return Err(user_not_found()),
        TokenInsert::AtLimit => {
            return Err(DomainError::new(
                ErrorCode::Conflict,
                "the user has the most tokens allowed",
            ));
        }
    }
    tracing::info!(token_id = %token.token_id, kind = token.kind.as_str(), "OATH token registered");
    Ok(token.record())
}

/// The user's OATH tokens (never their seeds).
pub(crate) async fn list_tokens(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<OtpTokenList, DomainError> {
    require_user(ctx, app, user_id).await?;
    let tokens = otp::tokens_for_user(&ctx.db, app, user_id).await?;
    Ok(OtpTokenList {
        tokens: tokens.iter().map(OathToken::record).collect(),
    })
}

/// Removes one of the user's OATH tokens.
pub(crate) async fn remove_token(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    token_id: &str,
) -> Result<(), DomainError> {
    require_user(ctx, app, user_id).await?;
    if otp::delete_token(&ctx.db, app, user_id, token_id).await? {
        Ok(())
    } else {
        Err(DomainError::new(
            ErrorCode::OtpTokenNotFound,
            "no such token for this user",
        ))
    }
}

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_normalized_and_checked_for_shape() {
        assert_eq!(normalize(" 123 456\t"), "123456");
        assert!(well_formed("123456", 6));
        assert!(!well_formed("12345", 6));
        assert!(!well_formed("12345a", 6));
        assert!(well_formed("12345678", 8));
        assert!(matches("123456", "123456"));
        assert!(!matches("123456", "123457"));
        assert!(!matches("123456", "1234567"));
    }

    #[test]
    fn steps_cover_the_drift_window_and_never_go_negative() {
        let steps: Vec<i64> = steps_around(90, 30, 1).map(|(s, _)| s).collect();
        assert_eq!(steps, vec![2, 3, 4]);
        let steps: Vec<i64> = steps_around(10, 30, 1).map(|(s, _)| s).collect();
        assert_eq!(steps, vec![0, 1]);
        let steps: Vec<i64> = steps_around(-5, 30, 0).map(|(s, _)| s).collect();
        assert_eq!(steps, vec![0]);
    }

    #[test]
    fn an_enrollment_code_matches_its_time_step() {
        let seed = EnrollmentSeed {
            enrollment_id: EnrollmentId::generate(),
            seed: Zeroizing::new(b"12345678901234567890".to_vec()),
            last_step: 0,
        };
        // RFC 6238: at T = 59 s the SHA-1 TOTP is 94287082 (8 digits); its last 6 are 287082.
        assert_eq!(seed_matches(&seed, "287082", 59, 0).unwrap(), vec![1]);
        assert_eq!(seed_matches(&seed, "287082", 59 + 30, 1).unwrap(), vec![1]);
        assert!(
            seed_matches(&seed, "287082", 59 + 90, 1)
                .unwrap()
                .is_empty()
        );
        assert!(seed_matches(&seed, "28708", 59, 0).unwrap().is_empty());
    }

    #[test]
    fn token_registrations_are_checked() {
        let body = |digits, period, counter| RegisterOtpToken {
            kind: OtpTokenKind::OathToken,
            secret: String::new(),
            algorithm: Default::default(),
            digits,
            period,
            counter,
        };
        assert_eq!(
            token_shape(&body(None, None, None)).unwrap(),
            (6, Some(30), None)
        );
        assert_eq!(
            token_shape(&body(Some(8), None, Some(5))).unwrap(),
            (8, None, Some(5))
        );
        assert!(token_shape(&body(Some(9), None, None)).is_err());
        let largest = u64::try_from(MAX_HOTP_COUNTER).unwrap();
        assert!(token_shape(&body(None, None, Some(largest))).is_ok());
        assert!(token_shape(&body(None, None, Some(largest + 1))).is_err());
        assert!(token_shape(&body(None, None, Some(u64::MAX))).is_err());
        assert!(token_shape(&body(None, Some(30), Some(1))).is_err());
        assert!(token_shape(&body(None, Some(5), None)).is_err());
        assert!(token_seed("GEZD GMZU-GY3T OOJQ GEZD GMZU GY3T OOJQ").is_ok());
        assert!(token_seed("GEZDGMZU").is_err(), "too short");
        assert!(token_seed("not base32!").is_err());
        assert_eq!(token_amr(OtpTokenKind::Yubikey), json!(["hwk", "otp"]));
    }
}
