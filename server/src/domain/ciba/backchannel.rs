//! The backchannel authentication request (CIBA Core §7): a relying party asks for a user;
//! the request reaches the user's device; the acknowledgement carries the `auth_req_id`.

use serde_json::{Map, Value};
use tessera_protocol::authentication::{AccessContext, AuthenticationKind, CibaDetails};
use tessera_protocol::ciba::{ACR_MOBILE_USER_VERIFIED, BackchannelAcknowledgement, DeliveryMode};
use tessera_protocol::ids::{ApplicationId, UserId};

use super::client_auth::{
    self, BasicCredentials, CLIENT_AUTH_PARAMS, CLOCK_SKEW, ClientJwtError, Form, MAX_JWT_LIFETIME,
};
use super::clients::user_code_matches;
use super::error::{OAuthCode, OAuthError, invalid_request, server_error};
use super::{SUPPORTED_SCOPES, endpoint_url, issuer};
use crate::domain::applications::Admitted;
use crate::domain::authentication::{
    PolicyFacts, Question, RequestReads, new_authentication, pick_device_among, read_for_request,
};
use crate::domain::{Ctx, DomainError};
use crate::store::ciba::{self, CibaClient, CibaRequest, NotifyState};
use crate::store::nonces;

/// Longest binding message, in characters.
pub(crate) const MAX_BINDING_MESSAGE: usize = 100;
/// Longest client notification token, in bytes.
const MAX_NOTIFICATION_TOKEN: usize = 1024;
/// Consecutive wrong user codes after which a user's code is refused until it is set again.
pub(crate) const MAX_USER_CODE_FAILURES: i64 = 5;

const REQUEST_PARAMS: &[&str] = &[
    "scope",
    "client_notification_token",
    "acr_values",
    "login_hint_token",
    "id_token_hint",
    "login_hint",
    "binding_message",
    "user_code",
    "requested_expiry",
];

/// The authentication request's parameters, from the form or from a signed `request`.
#[derive(Default)]
struct Params(Map<String, Value>);

impl Params {
    fn text(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid_request(format!("{name} must be a string"))),
        }
    }
}

/// A backchannel authentication request: authenticates the client, reads the parameters (from
/// the form or from a signed `request`), asks the user's device and stores the request.
pub(crate) async fn authenticate(
    state: &Ctx,
    basic: Option<BasicCredentials>,
    form: &Form,
) -> Result<BackchannelAcknowledgement, OAuthError> {
    let audiences = [issuer(state), endpoint_url(state, super::BACKCHANNEL_PATH)];
    // The user's reads go out beside the client's own when the client is hinted (reads only,
    // used once the client is authenticated under the hinted application).
    let target = early_target(state, basic.as_ref(), form);
    let (client, early) = tokio::join!(
        client_auth::authenticate_client(state, basic, form, &audiences),
        async {
            match &target {
                Some((app, user)) => {
                    Some(read_for_request(state, app, user, PolicyFacts::ReadAhead).await)
                }
                None => None,
            }
        },
    );
    let client = client?;
    state.ciba_client_hints.remember(&client);
    let early = target
        .zip(early)
        .map(|((application, user), reads)| EarlyReads {
            application,
            user,
            reads,
        });
    if !client.allows(tessera_protocol::ciba::GrantType::Ciba) {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "this client is not registered for the CIBA grant",
        ));
    }
    let now = state.now();
    let params = if let Some(request) = form.get("request") {
        if let Some(extra) = form
            .names()
            .find(|n| *n != "request" && !CLIENT_AUTH_PARAMS.contains(n))
        {
            let extra = if REQUEST_PARAMS.contains(&extra) {
                extra
            } else {
                "another parameter"
            };
            return Err(invalid_request(format!(
                "with a signed request, every parameter goes inside it ({extra} is outside)"
            )));
        }
        signed_request_params(state, &client, request, &audiences, now).await?
    } else {
        if client.request_signing_alg.is_some() {
            return Err(invalid_request(
                "this client registered a signing algorithm: its requests must be signed (request)",
            ));
        }
        let mut map = Map::new();
        for name in REQUEST_PARAMS {
            if let Some(value) = form.get(name) {
                map.insert((*name).to_string(), Value::String(value.to_string()));
            }
        }
        Params(map)
    };
    start(state, &client, &params, now, early).await
}

/// A request's reads made beside its client's authentication ([`early_target`]).
struct EarlyReads {
    /// The application the client was hinted for.
    application: ApplicationId,
    /// The user the `login_hint` named.
    user: UserId,
    /// What [`read_for_request`] read for them.
    reads: Result<RequestReads, DomainError>,
}

/// The application and user a request's reads can start with beside its client's
/// authentication: when the client presents the secret it had when last found
/// (`ciba::client_hints`) and the request names its user by a plain `login_hint`, outside a
/// signed request. Otherwise `None`: the user is read once the client is known.
fn early_target(
    state: &Ctx,
    basic: Option<&BasicCredentials>,
    form: &Form,
) -> Option<(ApplicationId, UserId)> {
    if ["request", "id_token_hint", "login_hint_token"]
        .iter()
        .any(|name| form.get(name).is_some())
    {
        return None;
    }
    let user: UserId = form.get("login_hint")?.parse().ok()?;
    let (id, secret) = match basic {
        Some(basic) => (basic.id.as_str(), basic.secret.as_str()),
        None => (form.get("client_id")?, form.get("client_secret")?),
    };
    let application = state.ciba_client_hints.application_for(id, secret)?;
    Some((application, user))
}

/// Verifies a signed authentication request (CIBA Core §7.1.1) and returns its claims.
async fn signed_request_params(
    state: &Ctx,
    client: &CibaClient,
    request: &str,
    audiences: &[String],
    now: i64,
) -> Result<Params, OAuthError> {
    let Some(alg) = client.request_signing_alg.as_deref() else {
        return Err(invalid_request(
            "this client registered no request signing algorithm",
        ));
    };
    let claims = client_auth::verify_client_jwt(client, request, Some(alg)).map_err(|e| {
        invalid_request(match e {
            ClientJwtError::Malformed => "the signed request is malformed",
            ClientJwtError::Algorithm => {
                "the signed request's algorithm is not the one this client registered"
            }
            ClientJwtError::NoKey | ClientJwtError::Signature => {
                "the signed request's signature does not verify with this client's keys"
            }
        })
    })?;
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    for name in ["aud", "iss", "exp", "iat", "nbf", "jti"] {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(invalid_request(format!(
                "the signed request has no {name} claim"
            )));
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(client.client_id.as_str()) {
        return Err(invalid_request(
            "the signed request's iss is not this client",
        ));
    }
    if !client_auth::audience_matches(claims.get("aud"), audiences) {
        return Err(invalid_request(
            "the signed request's aud is not this provider",
        ));
    }
    let (Some(exp), Some(iat), Some(nbf)) = (number("exp"), number("iat"), number("nbf")) else {
        return Err(invalid_request(
            "the signed request's exp, iat and nbf must be numbers",
        ));
    };
    if exp <= now {
        return Err(invalid_request("the signed request has expired"));
    }
    if nbf > now + CLOCK_SKEW {
        return Err(invalid_request("the signed request is not valid yet (nbf)"));
    }
    if iat > now + CLOCK_SKEW {
        return Err(invalid_request(
            "the signed request was issued in the future",
        ));
    }
    if exp - nbf > MAX_JWT_LIFETIME {
        return Err(invalid_request(
            "the signed request's lifetime (exp - nbf) exceeds 60 minutes",
        ));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| invalid_request("the signed request's jti must be a short string"))?;
    if !nonces::record_once(
        &state.db,
        &client_auth::jti_key(&client.client_id, jti),
        exp,
        now,
    )
    .await?
    {
        return Err(invalid_request("the signed request's jti was used before"));
    }
    let mut map = Map::new();
    for name in REQUEST_PARAMS {
        if let Some(value) = claims.get(*name) {
            let value = match (name, value) {
                // requested_expiry may be a JSON number inside a signed request.
                (&"requested_expiry", Value::Number(n)) => Value::String(n.to_string()),
                (_, v) => v.clone(),
            };
            map.insert((*name).to_string(), value);
        }
    }
    Ok(Params(map))
}

fn check_binding_message(message: &str) -> Result<(), OAuthError> {
    if message.trim().is_empty()
        || message.chars().count() > MAX_BINDING_MESSAGE
        || !tessera_protocol::display::is_displayable(message)
    {
        return Err(OAuthError::new(
            OAuthCode::InvalidBindingMessage,
            format!(
                "the binding message must be 1 to {MAX_BINDING_MESSAGE} characters without control, bidirectional or invisible format characters"
            ),
        ));
    }
    Ok(())
}

/// RFC 6750 `b64token`: what a bearer token may hold.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn unknown_user() -> OAuthError {
    OAuthError::new(
        OAuthCode::UnknownUserId,
        "the hint does not identify a user of this client's application",
    )
}

/// The subject the request names by its one hint: the application's user id, or the subject
/// this provider's ID tokens carry for that user.
async fn hinted_subject(
    state: &Ctx,
    client: &CibaClient,
    params: &Params,
    now: i64,
) -> Result<String, OAuthError> {
    let hints = [
        params.text("login_hint")?,
        params.text("id_token_hint")?,
        params.text("login_hint_token")?,
    ];
    let given = hints.iter().filter(|h| h.is_some()).count();
    if given != 1 {
        return Err(invalid_request(
            "give exactly one of login_hint, id_token_hint and login_hint_token",
        ));
    }
    let subject: String = match hints {
        [Some(login_hint), _, _] => login_hint.to_string(),
        [_, Some(id_token_hint), _] => {
            let ttl = i64::from(state.config.oidc_token_ttl);
            let claims = super::keys::verify_own(&state.db, id_token_hint, now, ttl)
                .await?
                .ok_or_else(|| {
                    invalid_request("the id_token_hint is not an ID token this provider signed")
                })?;
            if claims.get("iss").and_then(Value::as_str) != Some(issuer(state).as_str())
                || !client_auth::audience_matches(
                    claims.get("aud"),
                    std::slice::from_ref(&client.client_id),
                )
            {
                return Err(invalid_request(
                    "the id_token_hint was not issued to this client",
                ));
            }
            // An ID token names the user by this application's subject.
            let sub = claims
                .get("sub")
                .and_then(Value::as_str)
                .ok_or_else(unknown_user)?;
            super::user_of_subject(&client.application_id, sub)
                .ok_or_else(unknown_user)?
                .to_string()
        }
        [_, _, Some(token)] => {
            let claims = client_auth::verify_client_jwt(client, token, None).map_err(|_| {
                invalid_request(
                    "the login_hint_token must be a JWT signed with one of this client's keys",
                )
            })?;
            let exp = claims
                .get("exp")
                .and_then(Value::as_i64)
                .ok_or_else(|| invalid_request("the login_hint_token has no exp"))?;
            if exp <= now {
                return Err(OAuthError::new(
                    OAuthCode::ExpiredLoginHintToken,
                    "the login_hint_token has expired",
                ));
            }
            claims
                .get("sub")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid_request("the login_hint_token has no sub"))?
                .to_string()
        }
        _ => return Err(unknown_user()),
    };
    Ok(subject)
}

/// The user the request's hinted `subject` names, with their bypass as stored, and what the
/// request reads with them (the application's settings, the user's devices). A login hint (or a
/// login hint token's `sub`) is the application's user id, or the subject this provider's ID
/// tokens carry for that user (`{application}:{user}`, [`super::subject`]).
///
/// Text in the form of this application's subject is always read as one, never as a user id:
/// a user id may contain `:`, and a user created with the id `{application}:bob` must not
/// receive the requests a relying party sends for Bob's subject. Any other hint is a user id.
/// The reads are made for the text as a user id first, side by side ([`read_for_request`]),
/// and a subject's keeps their settings.
async fn read_hinted_user(
    state: &Ctx,
    client: &CibaClient,
    subject: &str,
    early: Option<EarlyReads>,
) -> Result<(UserId, Option<crate::store::bypass::Bypass>, RequestReads), OAuthError> {
    let app = &client.application_id;
    let of_subject = super::user_of_subject(app, subject);
    let mut by_id = None;
    if let Ok(user_id) = subject.parse::<UserId>() {
        // Reads made beside the client's authentication count only for its own application
        // and this user.
        let early = early.filter(|e| &e.application == app && e.user == user_id);
        let mut reads = match early {
            Some(early) => early.reads?,
            None => read_for_request(state, app, &user_id, PolicyFacts::ReadAhead).await?,
        };
        if of_subject.is_none()
            && let Some((_, bypass)) = reads.user.take()
        {
            return Ok((user_id, bypass, reads));
        }
        by_id = Some(reads);
    }
    let user_id: UserId = of_subject
        .ok_or_else(unknown_user)?
        .parse()
        .map_err(|_| unknown_user())?;
    // A subject is a valid user id too: its settings, read for it already, are kept.
    let mut reads = match by_id {
        Some(reads) => reads.for_user(state, app, &user_id).await?,
        None => read_for_request(state, app, &user_id, PolicyFacts::ReadAhead).await?,
    };
    let (_, bypass) = reads.user.take().ok_or_else(unknown_user)?;
    Ok((user_id, bypass, reads))
}

async fn check_user_code(
    state: &Ctx,
    client: &CibaClient,
    user: &UserId,
    code: Option<&str>,
) -> Result<(), OAuthError> {
    let Some(code) = code else {
        if client.user_code_required {
            return Err(OAuthError::new(
                OAuthCode::MissingUserCode,
                "this client's requests must carry the user's user_code",
            ));
        }
        return Ok(());
    };
    let invalid = || OAuthError::new(OAuthCode::InvalidUserCode, "the user_code is not valid");
    // The attempt is counted before the code is compared (one conditional update), so
    // concurrent guesses cannot all pass a limit read before any of them counted.
    let Some((salt, digest)) = ciba::take_user_code_attempt(
        &state.db,
        &client.application_id,
        user,
        MAX_USER_CODE_FAILURES,
    )
    .await?
    else {
        return Err(
            if ciba::user_code(&state.db, &client.application_id, user)
                .await?
                .is_some()
            {
                OAuthError::new(
                    OAuthCode::InvalidUserCode,
                    "too many wrong user codes: the user must set a new one",
                )
            } else {
                invalid()
            },
        );
    };
    let right =
        user_code_matches(state, &client.application_id, user, &salt, &digest, code).await?;
    if right {
        ciba::record_user_code_attempt(&state.db, &client.application_id, user, false).await?;
        Ok(())
    } else {
        Err(invalid())
    }
}

/// The requested scopes: supported ones only, `openid` among them (first), no repeats.
fn parse_scopes(scope: &str) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !SUPPORTED_SCOPES.contains(&s) {
            return Err(OAuthError::new(
                OAuthCode::InvalidScope,
                format!("supported scopes are {}", SUPPORTED_SCOPES.join(", ")),
            ));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "scope must contain openid",
        ));
    }
    scopes.sort_by_key(|s| s != "openid");
    Ok(scopes)
}

/// A new `auth_req_id`: 12 hex digits of the time in milliseconds, then 256 random bits (43
/// base64url characters). The random part is what makes it unguessable; the time in front keeps
/// the store's index of these ids growing at its end, where the requests committed together
/// share a page.
fn new_auth_req_id(unix_ms: i64) -> String {
    crate::domain::audit::new_ordered_id::<32>("", unix_ms)
}

/// Validates the parameters, asks the user's device and stores the request.
async fn start(
    state: &Ctx,
    client: &CibaClient,
    params: &Params,
    now: i64,
    early: Option<EarlyReads>,
) -> Result<BackchannelAcknowledgement, OAuthError> {
    let scope = params
        .text("scope")?
        .ok_or_else(|| invalid_request("scope is required"))?;
    let scopes = parse_scopes(scope)?;
    let notification_token = params.text("client_notification_token")?;
    match (client.delivery_mode, notification_token) {
        (DeliveryMode::Poll, _) => {}
        (_, None) => {
            return Err(invalid_request(
                "client_notification_token is required in ping and push modes",
            ));
        }
        (_, Some(token)) => {
            if token.len() > MAX_NOTIFICATION_TOKEN || !is_b64token(token) {
                return Err(invalid_request(
                    "client_notification_token must be a bearer token of at most 1024 characters",
                ));
            }
        }
    }
    let binding_message = params.text("binding_message")?;
    if let Some(message) = binding_message {
        check_binding_message(message)?;
    }
    let expires_in = match params.text("requested_expiry")? {
        None => state.config.ciba_default_expiry,
        Some(raw) => {
            let n: u32 =
                raw.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid_request("requested_expiry must be a positive integer")
                })?;
            n.clamp(10, state.config.ciba_max_expiry)
        }
    };
    // acr_values is a voluntary request: every approval is ACR_MOBILE_USER_VERIFIED.
    if let Some(acr_values) = params.text("acr_values")?
        && acr_values.len() > 1024
    {
        return Err(invalid_request("acr_values is too long"));
    }
    // The request's reads that need nothing else (the user with its bypass, the application's
    // settings with its current policy and push settings, the user's devices), side by side.
    let subject = hinted_subject(state, client, params, now).await?;
    let (
        user,
        stored_bypass,
        RequestReads {
            settings: app_settings,
            devices: user_devices,
            policy_facts,
            ..
        },
    ) = read_hinted_user(state, client, &subject, early).await?;
    check_user_code(state, client, &user, params.text("user_code")?).await?;
    // No device is a refusal; a database that cannot answer is not (temporarily_unavailable).
    let device = pick_device_among(state, &client.application_id, &user, user_devices, None)
        .await
        .map_err(|e| match e {
            DomainError::Refused { .. } => OAuthError::new(
                OAuthCode::AccessDenied,
                "the user has no paired device that can authenticate",
            ),
            other => OAuthError::from(other),
        })?;
    // The application's mandatory methods and policy (kind `ciba`), before the user is asked.
    // A CIBA approval is always made on the device with user verification: `approve` lets the
    // request go on like `require`.
    crate::domain::methods::require_mandatory_of(
        state,
        &client.application_id,
        &user,
        &app_settings.otp,
    )
    .await
    .map_err(|e| match e {
        DomainError::Refused { message, .. } => OAuthError::new(OAuthCode::AccessDenied, message),
        other => OAuthError::from(other),
    })?;
    let decided = crate::domain::policy::decide_as_read(
        state,
        &client.application_id,
        &user,
        &crate::domain::policy::Request {
            kind: tessera_protocol::policy::RequestKind::Ciba,
            accessing_ip: None,
            device: Some(crate::domain::policy::device_facts(&device)),
            fields: &[],
        },
        app_settings.policy.as_ref(),
        policy_facts,
    )
    .await?;
    if let Some(decided) = &decided
        && let Err(DomainError::Refused { message, .. }) =
            crate::domain::policy::check_mobile(decided)
    {
        crate::domain::policy::record(state, &client.application_id, &user, None, decided).await?;
        let d = &decided.decision;
        return Err(OAuthError::new(
            OAuthCode::AccessDenied,
            format!(
                "denied by the application's policy (version {}, rule \"{}\", action {}): {message}",
                d.version, d.rule, d.action
            ),
        ));
    }
    // A bypass (docs/bypass-and-recovery.md): the request completes at once, nothing is sent,
    // provided the bypass still stands when the request is stored (below).
    let bypass = crate::domain::bypass::in_force(state, stored_bypass);
    let settings = app_settings.authentication;
    let push_settings = app_settings.push;
    let number_matching = settings.number_matching;
    let application_name = app_settings.name;
    let details = CibaDetails {
        client_name: client.name.clone(),
        binding_message: binding_message.map(str::to_string),
        scopes: scopes.clone(),
    };
    let record = new_authentication(
        state,
        &client.application_id,
        &user,
        &device,
        Question {
            kind: AuthenticationKind::Ciba,
            parameters: details.display_parameters(),
            context: AccessContext {
                application_name,
                application_icon_url: None,
                ip: None,
                location: None,
            },
            number_matching,
            require_user_verification: true,
            expires_in,
            ciba: Some(details),
            // CIBA texts are derived by the device from the details (CibaDetails::display_parameters).
            locale: None,
        },
    )
    .map_err(|e| match e {
        DomainError::Refused { .. } => server_error("CIBA request signing"),
        other => OAuthError::from(other),
    })?;
    let interval = i64::from(state.config.ciba_poll_interval.max(1));
    let request = CibaRequest {
        auth_req_id: new_auth_req_id(state.now_ms()),
        client_id: client.client_id.clone(),
        authentication_id: record.id.to_string(),
        application_id: client.application_id.clone(),
        user_id: user,
        scope: scopes.join(" "),
        acr: ACR_MOBILE_USER_VERIFIED.to_string(),
        client_notification_token: notification_token.map(str::to_string),
        poll_interval: interval,
        // Only token requests count toward the interval: the first one may come at once.
        last_polled_at_ms: None,
        created_at: now,
        expires_at: record.expires_at,
        tokens_issued_at: None,
        notify_state: if client.delivery_mode == DeliveryMode::Poll {
            NotifyState::None
        } else {
            NotifyState::Waiting
        },
        notify_attempts: 0,
        notify_due_at_ms: None,
    };
    let admission = Admission {
        quota: crate::domain::applications::quotas_in_force(state, app_settings.quotas)
            .pending_requests,
        push_limit: decided.as_ref().and_then(|d| d.decision.push_limit),
        decided: decided.as_ref(),
    };
    // The request, the policy decision it was made under, (unless bypassed, which ends it at
    // once) its audit record and the CIBA row: one atomic write (`applications::admit`; on
    // PostgreSQL one statement); its device is told once it committed. A bypassed request is
    // stored only while the bypass stands, checked in that write: one cleared since it was read
    // asks the device instead, as it would have had the clearing come first.
    let mut bypassed_admission = None;
    if let Some(bypass) = &bypass {
        let mut bypassed = record.clone();
        crate::domain::bypass::end_by_bypass(state, &mut bypassed, bypass);
        let bypassed_request = CibaRequest {
            acr: crate::domain::bypass::ACR_BYPASS.to_string(),
            ..request.clone()
        };
        // Bypassed requests reach no device and do not count towards the push-bombing cap.
        let created = crate::domain::outcome::NewRequest::unannounced();
        match admission
            .admit(state, &bypassed, &bypassed_request, None, &created)
            .await?
        {
            Admitted::BypassCleared => {
                tracing::info!(authentication_id = %record.id, "bypass cleared meanwhile: device asked");
            }
            admitted => bypassed_admission = Some((admitted, bypassed)),
        }
    }
    let (admitted, bypassed) = match bypassed_admission {
        Some((admitted, bypassed)) => (admitted, Some(bypassed)),
        None => {
            let push_bombing =
                crate::domain::applications::push_bombing_limits(&state.config, &settings);
            let created = crate::domain::outcome::NewRequest::of(state, &record)?;
            let admitted = admission
                .admit(state, &record, &request, Some(push_bombing), &created)
                .await?;
            (admitted, None)
        }
    };
    let announced = match admitted {
        Admitted::Stored(announced) => announced,
        Admitted::PushLimited(reason) => {
            // Other requests took the policy's last places since it was decided: denied, as it
            // would have been had they come first.
            let Some(mut decided) = decided else {
                return Err(server_error("a push limit without a policy decision"));
            };
            decided.limit_reached(reason);
            crate::domain::policy::record(
                state,
                &client.application_id,
                &request.user_id,
                None,
                &decided,
            )
            .await?;
            let d = &decided.decision;
            return Err(OAuthError::new(
                OAuthCode::AccessDenied,
                format!(
                    "denied by the application's policy (version {}, rule \"{}\", action {}): {}",
                    d.version, d.rule, d.action, d.reason
                ),
            ));
        }
        // Only a request the bypass ended is admitted while the bypass stands.
        Admitted::BypassCleared => {
            return Err(server_error(
                "a request without a bypass refused for its bypass",
            ));
        }
        Admitted::FlowLost => {
            return Err(server_error("a CIBA request refused for a flow's move"));
        }
    };
    tracing::info!(authentication_id = %record.id, client_id = %client.client_id, "CIBA request accepted");
    announced.committed(state);
    if let Some(bypassed) = &bypassed {
        tracing::info!(authentication_id = %record.id, "CIBA request bypassed");
        crate::domain::outcome::ended(state, bypassed).await;
    } else {
        tokio::spawn(crate::domain::fallback::deliver(
            state.clone(),
            record.clone(),
            device,
            true,
            push_settings,
        ));
    }
    Ok(BackchannelAcknowledgement {
        auth_req_id: request.auth_req_id,
        expires_in: u64::from(expires_in),
        interval: interval.unsigned_abs(),
        number_to_show: record.number_to_show,
    })
}

/// What a new CIBA request is admitted under, bypassed or not
/// ([`crate::domain::applications::admit`]).
struct Admission<'a> {
    /// The application's quota of pending requests in force.
    quota: u32,
    /// A policy's `limit_push` that let the request through.
    push_limit: Option<crate::domain::policy::evaluate::PushLimit>,
    /// The policy decision the request was made under.
    decided: Option<&'a crate::domain::policy::Decided>,
}

impl Admission<'_> {
    /// Admits `record` with its CIBA row `request`, under the push-bombing limits
    /// `push_bombing` (none for a bypassed request, which reaches no device) and with its audit
    /// records `created`; the refusals the client is told are answered as OAuth errors.
    async fn admit(
        &self,
        state: &Ctx,
        record: &crate::store::authentications::Authentication,
        request: &CibaRequest,
        push_bombing: Option<tessera_protocol::api::PushBombingLimits>,
        created: &crate::domain::outcome::NewRequest,
    ) -> Result<Admitted, OAuthError> {
        let limits = crate::domain::applications::UserLimits {
            push_bombing,
            push_limit: self.push_limit,
        };
        crate::domain::applications::admit(
            state,
            record,
            self.quota,
            &limits,
            self.decided,
            created,
            crate::domain::applications::MadeFor::Ciba(request),
        )
        .await
        .map_err(|e| match e {
            DomainError::Refused {
                code: tessera_protocol::error::ErrorCode::TooManyAuthentications,
                ..
            } => OAuthError::new(
                OAuthCode::AccessDenied,
                "the user has too many pending requests; try again later",
            ),
            DomainError::Refused { message, .. } => {
                OAuthError::new(OAuthCode::AccessDenied, message)
            }
            other => OAuthError::from(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_req_ids_sort_by_their_millisecond_and_keep_256_random_bits() {
        let early = new_auth_req_id(1_764_000_000_000);
        let late = new_auth_req_id(1_764_000_000_001);
        let twin = new_auth_req_id(1_764_000_000_001);
        assert!(early < late && early < twin);
        assert_ne!(late, twin);
        assert!(late.starts_with("019ab697e801"));
        use base64::Engine;
        let random = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&late[12..])
            .expect("base64url");
        assert_eq!(random.len(), 32);
        assert!(new_auth_req_id(-1).starts_with("000000000000"));
    }

    #[test]
    fn binding_messages_allow_spaces_but_not_control_characters() {
        assert!(check_binding_message("Ticket 4711 · pay 120 EUR").is_ok());
        assert!(check_binding_message("   ").is_err());
        assert!(check_binding_message("line\nbreak").is_err());
        assert!(check_binding_message(&"x".repeat(MAX_BINDING_MESSAGE)).is_ok());
        assert!(check_binding_message(&"x".repeat(MAX_BINDING_MESSAGE + 1)).is_err());
    }

    #[test]
    fn scopes_need_openid_first_and_supported_only() {
        assert_eq!(
            parse_scopes("profile  openid profile").unwrap(),
            ["openid", "profile"]
        );
        let e = parse_scopes("profile").unwrap_err();
        assert_eq!(e.code, OAuthCode::InvalidScope);
        let e = parse_scopes("openid email").unwrap_err();
        assert_eq!(e.code, OAuthCode::InvalidScope);
        assert_eq!(
            parse_scopes("offline_access openid").unwrap(),
            ["openid", "offline_access"]
        );
    }

    #[test]
    fn signed_request_parameters_must_be_strings() {
        let mut map = Map::new();
        map.insert("scope".into(), Value::String("openid".into()));
        map.insert("binding_message".into(), Value::from(3));
        map.insert("user_code".into(), Value::String(String::new()));
        let params = Params(map);
        assert_eq!(params.text("scope").unwrap(), Some("openid"));
        assert!(params.text("binding_message").is_err());
        assert_eq!(params.text("user_code").unwrap(), None);
        assert_eq!(params.text("login_hint").unwrap(), None);
    }

    #[test]
    fn notification_tokens_are_bearer_tokens() {
        assert!(is_b64token("abc-DEF_123.~+/=="));
        assert!(!is_b64token("has space"));
        assert!(!is_b64token("==="));
    }
}
