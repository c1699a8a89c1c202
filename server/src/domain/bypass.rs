//! Bypass and recovery codes: two ways a user without their device still signs in, kept apart
//! from a real second factor in every result.
//!
//! - **Bypass** ([`grant`], [`status`], [`clear`]): an administrator lets a user's
//!   authentications complete without a device until a time, for a reason (required, recorded
//!   in the audit log with who granted it), for at most [`crate::ServerConfig::max_bypass_seconds`].
//!   While it lasts, a push or transaction authentication, a flow and a CIBA request complete
//!   at once with type `BYPASS` and nothing is sent to a device ([`active`]). A policy `deny`
//!   still wins over a bypass; a silent verification and a QR login (they prove the phone is
//!   there) are never bypassed. Time comes from the server's clock: a bypass ends by itself.
//!   Grants and code issues look the user up inside their own write, under the user's row lock
//!   (`store::users::lock`), so a user deleted meanwhile leaves nothing for a later user of the
//!   same id.
//! - **Recovery codes** ([`issue_codes`], [`codes_status`], [`revoke_codes`],
//!   [`answer_authentication`], [`spend`]): ten single-use codes shown once; only a salted
//!   SHA-256 digest of each is kept (they carry 59 random bits each). Issuing new codes
//!   replaces the old ones in one transaction, which takes its turn on the user's row (as a
//!   revoke does): of issues and revokes at once, the last to commit decides which codes work,
//!   never a mix of sets. A code completes one pending push or transaction (type
//!   `RECOVERY_CODE`; never a silent verification or a CIBA request, which prove the phone):
//!   the user's passcode attempt is taken atomically before comparing (the passcode lockout
//!   applies), each digest is compared in constant time, and a code is spent by one
//!   conditional update (of racing uses one wins) inside the write that records the approval,
//!   so a request that ends meanwhile leaves the code unspent.
//!
//! See `docs/bypass-and-recovery.md`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tessera_protocol::authentication::{
    AuthenticationId, AuthenticationKind, AuthenticationState, Decision,
};
use tessera_protocol::bypass::{
    BypassStatus, RecoveryCodesIssued, RecoveryCodesStatus, SetBypassRequest,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, UserId};
use zeroize::Zeroizing;

use super::audit::{Actor, Event};
use super::authentication::{accessing_attributes, check_text, load_for, require_pending};
use super::otp::{approval_by, copy_answered, refuse, take_attempt};
use super::outcome::{self, Ending, Take, Taken};
use super::users::user_not_found;
use super::{Ctx, DomainError};
use crate::ip_table::IpTable;
use crate::store::authentications::{self, Authentication};
use crate::store::bypass::{self as store, Bypass, RecoveryCode};
use crate::store::{Database, otp as otp_store, users};

/// The authentication type of a bypassed authentication (seed 003).
pub(crate) const BYPASS_TYPE: &str = "BYPASS";
/// The authentication type of an authentication completed with a recovery code.
pub(crate) const RECOVERY_CODE_TYPE: &str = "RECOVERY_CODE";
/// The `acr` of an OpenID grant whose authentication was bypassed: no factor was used (not
/// `mfa`, not a device-key acr). Never asked for in `acr_values`.
pub(crate) const ACR_BYPASS: &str = "urn:tessera:acr:bypass";
/// How many recovery codes are issued at once.
pub(crate) const RECOVERY_CODE_COUNT: usize = 10;
/// The longest reason a bypass may give, in characters.
pub(crate) const MAX_REASON_CHARS: usize = 256;
/// The characters of a recovery code: lower-case letters and digits without the look-alikes
/// `0 1 i l o`.
const CODE_ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
/// Characters of a recovery code (shown in groups of four).
const CODE_CHARS: usize = 12;

/// Who grants or ends a bypass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granter {
    /// The customer's backend, with its API key.
    Api,
    /// An operator, through the admin command line.
    Admin,
}

impl Granter {
    fn as_str(self) -> &'static str {
        match self {
            Granter::Api => "api",
            Granter::Admin => "admin",
        }
    }

    fn actor(self) -> Actor {
        match self {
            Granter::Api => Actor::Customer,
            Granter::Admin => Actor::Admin,
        }
    }
}

async fn require_user_in(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<(), DomainError> {
    users::get(db, app, user)
        .await?
        .map(|_| ())
        .ok_or_else(user_not_found)
}

/// When a bypass asked for with `body` at `now` ends, checked against `max_seconds`.
pub(crate) fn bypass_end(
    body: &SetBypassRequest,
    now: i64,
    max_seconds: u32,
) -> Result<i64, DomainError> {
    let until = match (body.duration_seconds, body.until) {
        (Some(seconds), None) => {
            if seconds == 0 {
                return Err(DomainError::invalid("duration_seconds must be at least 1"));
            }
            now.saturating_add(i64::from(seconds))
        }
        (None, Some(until)) => {
            if until <= now {
                return Err(DomainError::invalid("until must be in the future"));
            }
            until
        }
        _ => {
            return Err(DomainError::invalid(
                "give exactly one of duration_seconds and until",
            ));
        }
    };
    if until - now > i64::from(max_seconds) {
        return Err(DomainError::invalid(format!(
            "a bypass lasts at most {max_seconds} seconds on this server"
        )));
    }
    Ok(until)
}

/// The reason of a bypass: required, at most [`MAX_REASON_CHARS`], displayable text only.
pub(crate) fn check_reason(reason: &str) -> Result<String, DomainError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(DomainError::invalid("a bypass needs a reason"));
    }
    check_text(reason, MAX_REASON_CHARS, "reason")?;
    Ok(reason.to_string())
}

fn status_of(bypass: Option<&Bypass>, now: i64) -> BypassStatus {
    match bypass {
        Some(b) => BypassStatus {
            active: b.until > now,
            until: Some(b.until),
            granted_at: Some(b.granted_at),
            reason: Some(b.reason.clone()),
            granted_by: Some(b.granted_by.clone()),
        },
        None => BypassStatus {
            active: false,
            until: None,
            granted_at: None,
            reason: None,
            granted_by: None,
        },
    }
}

/// [`grant`] for callers without a [`Ctx`] (the admin command line).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn grant_in(
    db: &Database,
    ip_table: &IpTable,
    max_seconds: u32,
    app: &ApplicationId,
    user: &UserId,
    body: &SetBypassRequest,
    granter: Granter,
    now_ms: i64,
) -> Result<BypassStatus, DomainError> {
    let now = now_ms.div_euclid(1000);
    let reason = check_reason(&body.reason)?;
    let until = bypass_end(body, now, max_seconds)?;
    let bypass = Bypass {
        granted_at: now,
        until,
        reason,
        granted_by: granter.as_str().to_string(),
    };
    // The user is looked up inside the write that stores the bypass (not by a read before it):
    // a deletion in between would otherwise leave the bypass to a later user of the same id.
    if !store::set(db, app, user, &bypass).await? {
        return Err(user_not_found());
    }
    tracing::info!(until, granted_by = granter.as_str(), "bypass granted");
    let event = Event::new("bypass.granted", granter.actor(), "granted")
        .app(app)
        .user(user)
        .details(json!({ "until": until, "reason": bypass.reason }));
    if let Err(e) = super::audit::append(db, ip_table, now_ms, event).await {
        tracing::error!(error = %e, "the bypass could not be recorded in the audit log");
    }
    Ok(status_of(Some(&bypass), now))
}

/// Grants (or replaces) a user's bypass (`PUT /v1/users/{id}/bypass`).
pub(crate) async fn grant(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    body: &SetBypassRequest,
) -> Result<BypassStatus, DomainError> {
    grant_in(
        &ctx.db,
        &ctx.config.accessing_ip_table,
        ctx.config.max_bypass_seconds,
        app,
        user,
        body,
        Granter::Api,
        ctx.now_ms(),
    )
    .await
}

/// A user's bypass as it stands at `now`.
pub(crate) async fn status_in(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
    now: i64,
) -> Result<BypassStatus, DomainError> {
    require_user_in(db, app, user).await?;
    Ok(status_of(store::get(db, app, user).await?.as_ref(), now))
}

/// A user's bypass as it stands now (`GET /v1/users/{id}/bypass`).
pub(crate) async fn status(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<BypassStatus, DomainError> {
    status_in(&ctx.db, app, user, ctx.now()).await
}

/// [`clear`] for callers without a [`Ctx`].
pub(crate) async fn clear_in(
    db: &Database,
    ip_table: &IpTable,
    app: &ApplicationId,
    user: &UserId,
    granter: Granter,
    now_ms: i64,
) -> Result<BypassStatus, DomainError> {
    require_user_in(db, app, user).await?;
    if store::clear(db, app, user).await? {
        tracing::info!("bypass ended");
        let event = Event::new("bypass.cleared", granter.actor(), "cleared")
            .app(app)
            .user(user);
        if let Err(e) = super::audit::append(db, ip_table, now_ms, event).await {
            tracing::error!(error = %e, "the bypass's end could not be recorded in the audit log");
        }
    }
    Ok(status_of(None, now_ms.div_euclid(1000)))
}

/// Ends a user's bypass now (`DELETE /v1/users/{id}/bypass`).
pub(crate) async fn clear(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<BypassStatus, DomainError> {
    clear_in(
        &ctx.db,
        &ctx.config.accessing_ip_table,
        app,
        user,
        Granter::Api,
        ctx.now_ms(),
    )
    .await
}

/// The bypass `stored` for a user (as read with the user) if it is still in force.
pub(crate) fn in_force(ctx: &Ctx, stored: Option<Bypass>) -> Option<Bypass> {
    stored.filter(|b| b.until > ctx.now())
}

/// The attributes of a bypassed authentication: the accessing device's, the type `BYPASS`, when
/// the bypass ends, and no authenticating device and no `amr` (no factor was used).
pub(crate) fn bypass_attributes(
    ctx: &Ctx,
    accessing_ip: Option<&str>,
    bypass: &Bypass,
) -> BTreeMap<String, Value> {
    let mut a = BTreeMap::new();
    accessing_attributes(ctx, accessing_ip, &mut a);
    a.insert("pingid.authentication.type".into(), json!(BYPASS_TYPE));
    a.insert(
        "pingid.authentication.bypass.until".into(),
        json!(bypass.until),
    );
    a
}

/// Whether an authentication's attributes (JSON) say it was bypassed.
pub(crate) fn is_bypass(attributes: Option<&str>) -> bool {
    attributes
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .and_then(|a| {
            a.get("pingid.authentication.type")
                .and_then(Value::as_str)
                .map(|t| t == BYPASS_TYPE)
        })
        .unwrap_or(false)
}

/// Ends a not yet stored `record` as bypassed: approved at once with [`bypass_attributes`],
/// nothing to pull or push.
pub(crate) fn end_by_bypass(ctx: &Ctx, record: &mut Authentication, bypass: &Bypass) {
    record.answered_at = Some(ctx.now());
    record.otp_mode = authentications::OtpMode::None;
    record.otp_after = None;
    record.backup_channels = Vec::new();
    record.state = AuthenticationState::Approved;
    record.decision = Some(Decision::Approve);
    let a = bypass_attributes(ctx, record.accessing_ip.as_deref(), bypass);
    record.attributes = serde_json::to_string(&a).ok();
}

/// A new recovery code: [`CODE_CHARS`] characters of [`CODE_ALPHABET`].
fn new_code() -> Zeroizing<String> {
    let mut rng = rand::rngs::OsRng;
    Zeroizing::new(
        (0..CODE_CHARS)
            .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
            .collect(),
    )
}

/// `abcd-efgh-jkmn`.
fn shown(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A typed code as compared: lower case, without spaces and dashes.
pub(crate) fn normalize_code(code: &str) -> Zeroizing<String> {
    Zeroizing::new(
        code.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_lowercase)
            .collect(),
    )
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

/// The stored form of `code` (a fresh salt and id).
fn stored_code(code: &str) -> RecoveryCode {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = URL_SAFE_NO_PAD.encode(salt);
    let id = super::audit::new_id("rc_");
    RecoveryCode {
        digest: digest(&salt, &id, code),
        id,
        salt,
    }
}

/// Whether `code` (normalized) is `stored`, compared in constant time over the digests.
fn code_matches(stored: &RecoveryCode, code: &str) -> bool {
    let d = digest(&stored.salt, &stored.id, code);
    bool::from(d.as_bytes().ct_eq(stored.digest.as_bytes()))
}

/// [`issue_codes`] for callers without a [`Ctx`].
pub(crate) async fn issue_codes_in(
    db: &Database,
    ip_table: &IpTable,
    app: &ApplicationId,
    user: &UserId,
    granter: Granter,
    now_ms: i64,
) -> Result<RecoveryCodesIssued, DomainError> {
    let codes: Vec<Zeroizing<String>> = (0..RECOVERY_CODE_COUNT).map(|_| new_code()).collect();
    let stored: Vec<RecoveryCode> = codes.iter().map(|c| stored_code(c)).collect();
    // The user is looked up inside the write that replaces the codes (see
    // `store::bypass::replace_codes`): a deletion racing the issue leaves no codes behind, and
    // issues at once take turns, so only the last one's codes work.
    if !store::replace_codes(db, app, user, &stored, now_ms.div_euclid(1000)).await? {
        return Err(user_not_found());
    }
    tracing::info!(count = stored.len(), "recovery codes issued");
    let event = Event::new("recovery_codes.issued", granter.actor(), "issued")
        .app(app)
        .user(user)
        .details(json!({ "count": stored.len() }));
    if let Err(e) = super::audit::append(db, ip_table, now_ms, event).await {
        tracing::error!(error = %e, "the recovery codes' issue could not be recorded in the audit log");
    }
    Ok(RecoveryCodesIssued {
        codes: codes.iter().map(|c| shown(c)).collect(),
        remaining: u32::try_from(stored.len()).unwrap_or(u32::MAX),
    })
}

/// Issues ten new recovery codes for the user, revoking the old ones (`POST
/// /v1/users/{id}/recovery-codes`). Of issues at once, the one that commits last wins: only
/// its codes work.
pub(crate) async fn issue_codes(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<RecoveryCodesIssued, DomainError> {
    issue_codes_in(
        &ctx.db,
        &ctx.config.accessing_ip_table,
        app,
        user,
        Granter::Api,
        ctx.now_ms(),
    )
    .await
}

/// How many unused recovery codes the user has.
pub(crate) async fn codes_status(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<RecoveryCodesStatus, DomainError> {
    require_user_in(&ctx.db, app, user).await?;
    let remaining = store::unused_code_count(&ctx.db, app, user).await?;
    Ok(RecoveryCodesStatus {
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
    })
}

/// Revokes all of the user's recovery codes.
pub(crate) async fn revoke_codes(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
) -> Result<RecoveryCodesStatus, DomainError> {
    // Looked up inside the revoke's write, which takes turns with the issues (see
    // `store::bypass::revoke_codes`).
    let revoked = store::revoke_codes(&ctx.db, app, user)
        .await?
        .ok_or_else(user_not_found)?;
    let event = Event::new("recovery_codes.revoked", Actor::Customer, "revoked")
        .app(app)
        .user(user)
        .details(json!({ "unused": revoked }));
    super::audit::record(ctx, event).await;
    Ok(RecoveryCodesStatus { remaining: 0 })
}

/// The id of the user's unused recovery code that `code` (normalized) is, if any. Every
/// unused code's digest is computed and compared in constant time: the time does not tell
/// which code matched.
async fn matching_code(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<Option<String>, DomainError> {
    let codes = store::unused_codes(&ctx.db, app, user).await?;
    let mut matched = None;
    for stored in &codes {
        if code_matches(stored, code) && matched.is_none() {
            matched = Some(stored.id.clone());
        }
    }
    Ok(matched)
}

/// The refusal of a recovery code that is not one of the user's unused codes.
const WRONG_CODE: &str = "the recovery code is wrong or was already used";

/// Spends one of the user's recovery codes, in a write of its own (a flow's
/// `checkRecoveryCode`): takes a passcode attempt first (atomically; the lockout applies),
/// compares `code` with every unused code in constant time, and spends the match with one
/// conditional update. `otp_invalid` (or `otp_locked`) otherwise, also when a racing use spent
/// the same code first. A pending authentication is answered with [`answer_authentication`]
/// instead, which spends the code in the write that records the approval.
pub(crate) async fn spend(
    ctx: &Ctx,
    app: &ApplicationId,
    user: &UserId,
    code: &str,
) -> Result<(), DomainError> {
    let attempt = take_attempt(ctx, app, user).await?;
    let code = normalize_code(code);
    let spent = match matching_code(ctx, app, user, &code).await? {
        Some(id) => store::spend_code(&ctx.db, &id, ctx.now()).await?,
        None => false,
    };
    if !spent {
        return Err(refuse(ctx, &attempt, WRONG_CODE));
    }
    otp_store::reset_failures(&ctx.db, app, user).await?;
    tracing::info!("recovery code accepted");
    Ok(())
}

/// The attributes of an authentication completed with a recovery code.
pub(crate) fn recovery_code_attributes(
    ctx: &Ctx,
    accessing_ip: Option<&str>,
) -> BTreeMap<String, Value> {
    let mut a = BTreeMap::new();
    accessing_attributes(ctx, accessing_ip, &mut a);
    a.insert(
        "pingid.authentication.type".into(),
        json!(RECOVERY_CODE_TYPE),
    );
    a.insert("pingid.authentication.amr".into(), json!(["otp"]));
    a
}

/// Refuses a request a recovery code may not answer (`otp_not_allowed`): only a push or a
/// transaction takes one. A silent verification proves the phone is there, and a CIBA
/// request's ID token claims the phone's user verification (`acr`
/// `urn:tessera:acr:mobile-uv`, `amr`); neither is answered without the phone.
fn require_code_answers(record: &Authentication) -> Result<(), DomainError> {
    match record.kind {
        AuthenticationKind::Approval | AuthenticationKind::Transaction => Ok(()),
        AuthenticationKind::Silent | AuthenticationKind::Ciba => Err(DomainError::new(
            ErrorCode::OtpNotAllowed,
            "a silent verification or a CIBA request is answered on the phone only: it takes no recovery code",
        )),
    }
}

/// The digest of recovery code `code` (normalized) answering authentication `id`, as the
/// authentication keeps it once the code approves it (as `otp::passcode_digest` for a
/// passcode, under a label of its own): SHA-256 over a label, the id and the code. The code is
/// spent by then, so the digest names nothing that still works.
fn recovery_digest(id: &AuthenticationId, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tessera/recovery-code-answer/v1\0");
    h.update(id.as_str().as_bytes());
    h.update(b"\0");
    h.update(code.as_bytes());
    hex::encode(h.finalize())
}

/// Completes a pending push or transaction with one of its user's recovery codes
/// (`POST /v1/authentications/{id}/recovery-code`). Refused before anything is counted for
/// another kind of request ([`require_code_answers`]). A passcode attempt is taken first
/// (atomically; the lockout applies), the code is compared with every unused code in constant
/// time, and the match is spent in the write that records the approval
/// ([`outcome::record_taking`]): of racing uses of one code one spends it, and a request that
/// ended meanwhile (answered, denied, canceled, expired) leaves the code unspent and its
/// attempt given back. A copy of the code that approved the request (the same form sent twice,
/// a retry) is told that approval, and counts no failure.
pub(crate) async fn answer_authentication(
    ctx: &Ctx,
    app: &ApplicationId,
    id: &str,
    code: &str,
) -> Result<tessera_protocol::api::AuthenticationStatus, DomainError> {
    let record = load_for(ctx, app, id).await?;
    require_code_answers(&record)?;
    let code = normalize_code(code);
    let digest = recovery_digest(&record.id, &code);
    if let Err(ended) = require_pending(&record) {
        return match approval_by(ctx, &record, &digest).await? {
            Some(status) => Ok(status),
            None => Err(ended),
        };
    }
    let user = &record.user_id;
    let attempt = take_attempt(ctx, app, user).await?;
    let Some(code_id) = matching_code(ctx, app, user, &code).await? else {
        // Wrong, or spent: elsewhere, or by a copy of it whose approval of this request is
        // the answer (and whose attempt is given back).
        if let Some(status) = copy_answered(ctx, app, &record, &digest).await? {
            return Ok(status);
        }
        return Err(refuse(ctx, &attempt, WRONG_CODE));
    };
    let attributes = recovery_code_attributes(ctx, record.accessing_ip.as_deref());
    let text = serde_json::to_string(&attributes)
        .map_err(|_| DomainError::Internal("encoding attributes"))?;
    let ending = Ending::Passcode {
        attributes: &text,
        code_digest: Some(&digest),
    };
    let take = Take::RecoveryCode {
        id: &code_id,
        now: ctx.now(),
    };
    let current = match outcome::record_taking(ctx, &record.id, take, ending).await? {
        Taken::Recorded(recorded) => {
            otp_store::reset_failures(&ctx.db, app, user).await?;
            *recorded
        }
        Taken::NotRecorded => {
            // Ended meanwhile: the code is not spent, and as it was right its attempt is given
            // back; a copy of it may be what approved the request.
            otp_store::refund_attempt(&ctx.db, app, user).await?;
            let current = load_for(ctx, app, id).await?;
            if let Some(status) = approval_by(ctx, &current, &digest).await? {
                return Ok(status);
            }
            require_pending(&current)?;
            return Err(DomainError::new(
                ErrorCode::Conflict,
                "the authentication changed while the code was checked; send it again",
            ));
        }
        Taken::UsedUp => {
            // Spent since it was read: by a copy of it that approved this request, or by
            // another use.
            if let Some(status) = copy_answered(ctx, app, &record, &digest).await? {
                return Ok(status);
            }
            return Err(refuse(ctx, &attempt, WRONG_CODE));
        }
    };
    tracing::info!(authentication_id = %current.id, "authentication approved with a recovery code");
    Ok(current.status_at(ctx.now()))
}

#[cfg(test)]
mod flow_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn body(duration: Option<u32>, until: Option<i64>) -> SetBypassRequest {
        SetBypassRequest {
            duration_seconds: duration,
            until,
            reason: "lost phone".into(),
        }
    }

    #[test]
    fn a_bypass_ends_within_the_maximum_and_in_the_future() {
        assert_eq!(bypass_end(&body(Some(60), None), 1000, 3600).unwrap(), 1060);
        assert_eq!(
            bypass_end(&body(None, Some(4600)), 1000, 3600).unwrap(),
            4600
        );
        assert!(bypass_end(&body(Some(3601), None), 1000, 3600).is_err());
        assert!(bypass_end(&body(None, Some(4601)), 1000, 3600).is_err());
        assert!(bypass_end(&body(None, Some(1000)), 1000, 3600).is_err());
        assert!(bypass_end(&body(Some(0), None), 1000, 3600).is_err());
        assert!(bypass_end(&body(None, None), 1000, 3600).is_err());
        assert!(bypass_end(&body(Some(60), Some(2000)), 1000, 3600).is_err());
    }

    #[test]
    fn a_reason_is_required_short_and_plain() {
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(MAX_REASON_CHARS + 1)).is_err());
        assert!(check_reason("lost phone \u{202e}").is_err());
        assert_eq!(check_reason(" lost phone ").unwrap(), "lost phone");
    }

    #[test]
    fn codes_are_random_shown_in_groups_and_typed_loosely() {
        let code = new_code();
        assert_eq!(code.len(), CODE_CHARS);
        assert!(code.bytes().all(|b| CODE_ALPHABET.contains(&b)));
        assert_ne!(*code, *new_code());
        let shown = shown(&code);
        assert_eq!(shown.len(), CODE_CHARS + 2);
        let stored = stored_code(&code);
        assert!(!stored.digest.contains(code.as_str()));
        assert!(code_matches(&stored, &normalize_code(&shown)));
        assert!(code_matches(
            &stored,
            &normalize_code(&format!(" {} ", shown.to_uppercase()))
        ));
        assert!(!code_matches(&stored, &normalize_code("2222-2222-2222")));
        // Another code's salt and id give another digest for the same code.
        assert_ne!(stored.digest, stored_code(&code).digest);
    }
}
