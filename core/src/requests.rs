//! Incoming authentication requests: checking what the server sent, and the signed answer.

use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::authentication::{
    AccessContext, AuthenticationId, AuthenticationKind, AuthenticationRequest,
    AuthenticationResponse, CibaDetails, Decision, DeviceLocation, DisplayField,
    NUMBER_MATCHING_MAX, NUMBER_MATCHING_MIN, NumberMatching,
};
use tessera_protocol::envelope::{self, EnvelopeError, MessageType};
use tessera_protocol::ids::{EnrollmentId, UserId};
use tessera_protocol::jwk::JwkSet;
use tessera_protocol::pairing::{ApplicationInfo, DeviceSignals, ServerUrl};
use tessera_protocol::time::UnixSeconds;

use crate::error::CoreError;

/// RFC 8176 methods that verify the user (biometrics, PIN, password).
pub(crate) const USER_VERIFICATION_AMR: &[&str] = &["face", "fpt", "iris", "retina", "pin", "pwd"];

/// A request the server signed and this device checked, with exactly what to display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// The request's id.
    pub request_id: AuthenticationId,
    /// The enrollment asked.
    pub enrollment_id: EnrollmentId,
    /// The user asked (on a multi-user device, whom to show it to).
    pub user_id: UserId,
    /// The server.
    pub server: ServerUrl,
    /// The application.
    pub application: ApplicationInfo,
    /// Approval, transaction or silent verification.
    pub kind: AuthenticationKind,
    /// The headline to show.
    pub message: String,
    /// The fields to show, in order.
    pub fields: Vec<DisplayField>,
    /// Context the signature binds besides the displayed fields (`hidden_fields` of the
    /// request's parameters), in order. The user's approval covers them too: apps must show
    /// them or at least surface them (e.g. under "Details"), labelled as additional context.
    pub hidden_fields: Vec<DisplayField>,
    /// Where the sign-in comes from (application, accessing IP and location).
    pub context: AccessContext,
    /// Number matching: how the user gives the number the web page shows (`Choice`: pick one
    /// of `number_choices`; `Typed`: type it, no choices are offered; `Off`).
    pub number_matching: NumberMatching,
    /// Number matching (mode `Choice`): the numbers to offer; the user picks the one the web
    /// page shows. A wrong pick ends the request as denied.
    pub number_choices: Option<Vec<u32>>,
    /// Whether approving needs biometrics or the device PIN.
    pub require_user_verification: bool,
    /// For a CIBA request: the relying party, its binding message and the scopes it asks for
    /// (`message` and `fields` are derived from them).
    pub ciba: Option<CibaDetails>,
    /// When it expires.
    pub expires_at: UnixSeconds,
    /// The language (BCP 47, e.g. `de`) the server wrote its own texts of this request in, as
    /// signed in the request; `None` from servers before it existed or for a value that is not a
    /// language tag. Apps may show their own labels (buttons, "Details") in it.
    pub locale: Option<String>,
    pub(crate) request: AuthenticationRequest,
}

/// The signed `locale` if it looks like a language tag (letters, digits and `-`, at most 35
/// bytes); anything else is dropped rather than handed to the app.
fn usable_locale(locale: Option<&str>) -> Option<String> {
    locale
        .filter(|tag| {
            !tag.is_empty()
                && tag.len() <= 35
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_string)
}

/// Checks a signed request against the keys pinned for its server and the enrollment it names:
/// the check `handle_push` and the pull make before anything is shown. Public for benchmarks
/// and for apps that receive requests through their own channel.
pub fn verify_request(
    signed: &str,
    server: &ServerUrl,
    pinned: &JwkSet,
    enrollment_id: &EnrollmentId,
    user_id: &UserId,
    application: &ApplicationInfo,
    now: UnixSeconds,
) -> Result<IncomingRequest, CoreError> {
    let verified = envelope::verify_with_set::<AuthenticationRequest>(
        signed,
        MessageType::AuthenticationRequest,
        pinned,
    )
    .map_err(|e| match e {
        EnvelopeError::UnknownKey | EnvelopeError::BadSignature => CoreError::UntrustedServerKey,
        _ => CoreError::InvalidServerResponse("the request is malformed".into()),
    })?;
    let request = verified.payload;
    if request.v != PROTOCOL_VERSION {
        return Err(CoreError::ReplyMismatch("unsupported protocol version"));
    }
    if &request.issuer != server {
        return Err(CoreError::ReplyMismatch("issued by another server"));
    }
    if &request.enrollment_id != enrollment_id || &request.user_id != user_id {
        return Err(CoreError::ReplyMismatch("meant for another enrollment"));
    }
    let digest = request
        .parameters
        .digest()
        .map_err(|_| CoreError::InvalidServerResponse("the parameters cannot be encoded".into()))?;
    if !digest.ct_eq(&request.parameters_digest) {
        return Err(CoreError::ReplyMismatch(
            "the parameters do not match their digest",
        ));
    }
    if now >= request.expires_at {
        return Err(CoreError::RequestExpired);
    }
    let number_matching = request.number_matching_mode();
    if request.kind == AuthenticationKind::Silent
        && (number_matching.is_on() || request.require_user_verification)
    {
        return Err(CoreError::ReplyMismatch(
            "a silent verification asks nothing of the user",
        ));
    }
    check_number_matching(number_matching, request.number_choices.as_deref())?;
    match (&request.ciba, request.kind) {
        (Some(ciba), AuthenticationKind::Ciba) => {
            if ciba.display_parameters() != request.parameters || !request.require_user_verification
            {
                return Err(CoreError::ReplyMismatch(
                    "a CIBA request shows exactly its details and needs user verification",
                ));
            }
        }
        (None, AuthenticationKind::Ciba) | (Some(_), _) => {
            return Err(CoreError::ReplyMismatch(
                "CIBA details come with CIBA requests only",
            ));
        }
        (None, _) => {}
    }
    Ok(IncomingRequest {
        request_id: request.request_id.clone(),
        enrollment_id: request.enrollment_id.clone(),
        user_id: request.user_id.clone(),
        server: server.clone(),
        application: application.clone(),
        kind: request.kind,
        message: request.parameters.message.clone(),
        fields: request.parameters.fields.clone(),
        hidden_fields: request.parameters.hidden_fields.clone(),
        context: request.context.clone(),
        number_matching,
        number_choices: request.number_choices.clone(),
        require_user_verification: request.require_user_verification,
        ciba: request.ciba.clone(),
        expires_at: request.expires_at,
        locale: usable_locale(request.locale.as_deref()),
        request,
    })
}

/// Whether a number is one number matching can show (two digits).
fn is_matching_number(n: u32) -> bool {
    (NUMBER_MATCHING_MIN..=NUMBER_MATCHING_MAX).contains(&n)
}

/// A request's number matching must be coherent: choices (distinct 2-digit numbers, at most
/// 10) with `choice` only, none with `typed` or `off`.
fn check_number_matching(mode: NumberMatching, choices: Option<&[u32]>) -> Result<(), CoreError> {
    let coherent = match (mode, choices) {
        (NumberMatching::Choice, Some(choices)) => {
            !choices.is_empty()
                && choices.len() <= 10
                && choices.iter().all(|n| is_matching_number(*n))
                && choices
                    .iter()
                    .enumerate()
                    .all(|(i, n)| !choices[..i].contains(n))
        }
        (NumberMatching::Choice, None) => false,
        (NumberMatching::Typed | NumberMatching::Off, choices) => choices.is_none(),
    };
    if coherent {
        Ok(())
    } else {
        Err(CoreError::ReplyMismatch(
            "the number matching of the request is malformed",
        ))
    }
}

/// The answer to sign for a request.
pub(crate) fn response_for(
    request: &IncomingRequest,
    decision: Decision,
    selected_number: Option<u32>,
    amr: Vec<String>,
    signals: DeviceSignals,
    location: Option<DeviceLocation>,
    now: UnixSeconds,
) -> Result<AuthenticationResponse, CoreError> {
    if decision == Decision::Approve {
        // A number the user could not have picked or typed is refused here (nothing is sent);
        // a well-formed wrong number is sent, and the server ends the request as denied.
        match (request.number_matching, selected_number) {
            (NumberMatching::Off, _) => {}
            (_, None) => {
                return Err(CoreError::InvalidInput(
                    "this request needs the number shown on the web page".into(),
                ));
            }
            (NumberMatching::Choice, Some(n)) => {
                if !request
                    .number_choices
                    .as_ref()
                    .is_some_and(|choices| choices.contains(&n))
                {
                    return Err(CoreError::InvalidInput(
                        "the selected number was not offered".into(),
                    ));
                }
            }
            (NumberMatching::Typed, Some(n)) => {
                if !is_matching_number(n) {
                    return Err(CoreError::InvalidInput(
                        "the number shown on the web page has two digits".into(),
                    ));
                }
            }
        }
        if request.require_user_verification
            && !amr
                .iter()
                .any(|m| USER_VERIFICATION_AMR.contains(&m.as_str()))
        {
            return Err(CoreError::InvalidInput(
                "this request needs biometrics or the device PIN (amr fpt, face, iris, pin...)"
                    .into(),
            ));
        }
    } else if request.kind == AuthenticationKind::Silent {
        return Err(CoreError::InvalidInput(
            "a silent verification cannot be denied".into(),
        ));
    }
    Ok(AuthenticationResponse {
        v: PROTOCOL_VERSION,
        request_id: request.request_id.clone(),
        enrollment_id: request.enrollment_id.clone(),
        request_nonce: request.request.nonce.clone(),
        decision,
        parameters_digest: request.request.parameters_digest,
        selected_number: if decision == Decision::Approve && request.number_matching.is_on() {
            selected_number
        } else {
            None
        },
        amr,
        signals,
        location,
        device: None,
        issued_at: now,
        app_attest_assertion: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::authentication::DynamicParameters;
    use tessera_protocol::envelope::SoftwareSigningKey;
    use tessera_protocol::ids::ApplicationId;

    struct Fixture {
        key: SoftwareSigningKey,
        server: ServerUrl,
        enrollment: EnrollmentId,
        user: UserId,
        app: ApplicationInfo,
    }

    fn fixture() -> Fixture {
        Fixture {
            key: SoftwareSigningKey::generate(),
            server: ServerUrl::parse("https://auth.example.com").unwrap(),
            enrollment: EnrollmentId::generate(),
            user: "alice".parse().unwrap(),
            app: ApplicationInfo {
                id: ApplicationId::generate(),
                name: "Bank".into(),
            },
        }
    }

    fn request(f: &Fixture, expires_at: UnixSeconds) -> AuthenticationRequest {
        let parameters = DynamicParameters {
            message: "Pay?".into(),
            fields: vec![DisplayField {
                label: "Amount".into(),
                value: "1 EUR".into(),
            }],
            hidden_fields: vec![],
        };
        AuthenticationRequest {
            v: 1,
            request_id: AuthenticationId::generate(),
            issuer: f.server.clone(),
            enrollment_id: f.enrollment.clone(),
            user_id: f.user.clone(),
            kind: AuthenticationKind::Transaction,
            parameters_digest: parameters.digest().unwrap(),
            parameters,
            context: AccessContext::default(),
            number_choices: Some(vec![11, 22, 33]),
            number_matching: Some(NumberMatching::Choice),
            require_user_verification: true,
            ciba: None,
            locale: None,
            nonce: "n".into(),
            issued_at: 100,
            expires_at,
        }
    }

    #[test]
    fn the_signed_locale_reaches_the_app_and_is_bound_by_the_signature() {
        let f = fixture();
        let mut german = request(&f, 200);
        german.locale = Some("de".into());
        assert_eq!(
            check(&f, &german, 150).unwrap().locale.as_deref(),
            Some("de")
        );
        assert_eq!(check(&f, &request(&f, 200), 150).unwrap().locale, None);
        let mut odd = request(&f, 200);
        odd.locale = Some("de\u{202e}<b>".into());
        assert_eq!(check(&f, &odd, 150).unwrap().locale, None);
        // Changing the locale after signing breaks the signature.
        let signed = envelope::sign(MessageType::AuthenticationRequest, &german, &f.key).unwrap();
        let parts: Vec<&str> = signed.split('.').collect();
        let mut payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
                .unwrap(),
        )
        .unwrap();
        payload["locale"] = "fr".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                serde_json::to_vec(&payload).unwrap()
            ),
            parts[2]
        );
        let pinned = JwkSet {
            keys: vec![f.key.public_jwk()],
        };
        assert!(
            verify_request(
                &forged,
                &f.server,
                &pinned,
                &f.enrollment,
                &f.user,
                &f.app,
                150
            )
            .is_err()
        );
    }

    fn check(
        f: &Fixture,
        r: &AuthenticationRequest,
        now: UnixSeconds,
    ) -> Result<IncomingRequest, CoreError> {
        let signed = envelope::sign(MessageType::AuthenticationRequest, r, &f.key).unwrap();
        let pinned = JwkSet {
            keys: vec![f.key.public_jwk()],
        };
        verify_request(
            &signed,
            &f.server,
            &pinned,
            &f.enrollment,
            &f.user,
            &f.app,
            now,
        )
    }

    #[test]
    fn requests_are_checked_before_anything_is_shown() {
        let f = fixture();
        let good = request(&f, 200);
        let shown = check(&f, &good, 150).unwrap();
        assert_eq!(shown.fields, good.parameters.fields);
        assert_eq!(
            check(&f, &good, 200).unwrap_err(),
            CoreError::RequestExpired
        );

        let mut digest_mismatch = good.clone();
        digest_mismatch.parameters.fields[0].value = "1000 EUR".into();
        assert!(matches!(
            check(&f, &digest_mismatch, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut other_user = good.clone();
        other_user.user_id = "bob".parse().unwrap();
        assert!(matches!(
            check(&f, &other_user, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut other_server = good.clone();
        other_server.issuer = ServerUrl::parse("https://evil.example").unwrap();
        assert!(matches!(
            check(&f, &other_server, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut loud_silent = good.clone();
        loud_silent.kind = AuthenticationKind::Silent;
        assert!(matches!(
            check(&f, &loud_silent, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
    }

    #[test]
    fn ciba_requests_show_exactly_their_details() {
        let f = fixture();
        let details = CibaDetails {
            client_name: "Call Centre".into(),
            binding_message: Some("Ticket 4711".into()),
            scopes: vec!["openid".into(), "profile".into()],
        };
        let mut ciba = request(&f, 200);
        ciba.kind = AuthenticationKind::Ciba;
        ciba.parameters = details.display_parameters();
        ciba.parameters_digest = ciba.parameters.digest().unwrap();
        ciba.ciba = Some(details);
        let shown = check(&f, &ciba, 150).unwrap();
        assert_eq!(shown.message, "Ticket 4711");
        assert_eq!(shown.fields[0].value, "Call Centre");
        assert_eq!(shown.ciba.as_ref().unwrap().scopes, ["openid", "profile"]);

        // Details that say one thing while the parameters (what is signed) say another.
        let mut lying = ciba.clone();
        lying.ciba.as_mut().unwrap().client_name = "Another Bank".into();
        assert!(matches!(
            check(&f, &lying, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut without_uv = ciba.clone();
        without_uv.require_user_verification = false;
        assert!(matches!(
            check(&f, &without_uv, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut no_details = ciba.clone();
        no_details.ciba = None;
        assert!(matches!(
            check(&f, &no_details, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut details_on_transaction = ciba;
        details_on_transaction.kind = AuthenticationKind::Transaction;
        assert!(matches!(
            check(&f, &details_on_transaction, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
    }

    #[test]
    fn answers_need_an_offered_number_and_user_verification_when_asked() {
        let f = fixture();
        let shown = check(&f, &request(&f, 200), 150).unwrap();
        let fpt = vec!["fpt".to_string()];
        assert!(
            response_for(
                &shown,
                Decision::Approve,
                None,
                fpt.clone(),
                DeviceSignals::default(),
                None,
                150
            )
            .is_err()
        );
        assert!(
            response_for(
                &shown,
                Decision::Approve,
                Some(44),
                fpt.clone(),
                DeviceSignals::default(),
                None,
                150
            )
            .is_err()
        );
        assert!(
            response_for(
                &shown,
                Decision::Approve,
                Some(22),
                vec![],
                DeviceSignals::default(),
                None,
                150
            )
            .is_err()
        );
        let ok = response_for(
            &shown,
            Decision::Approve,
            Some(22),
            fpt,
            DeviceSignals::default(),
            None,
            150,
        )
        .unwrap();
        assert_eq!(ok.parameters_digest, shown.request.parameters_digest);
        assert_eq!(ok.request_nonce, "n");
        let deny = response_for(
            &shown,
            Decision::Deny,
            Some(22),
            vec![],
            DeviceSignals::default(),
            None,
            150,
        )
        .unwrap();
        assert_eq!(deny.selected_number, None, "a denial carries no number");
    }

    #[test]
    fn typed_number_matching_offers_nothing_and_takes_any_two_digit_number() {
        let f = fixture();
        let mut typed = request(&f, 200);
        typed.number_choices = None;
        typed.number_matching = Some(NumberMatching::Typed);
        let shown = check(&f, &typed, 150).unwrap();
        assert_eq!(shown.number_matching, NumberMatching::Typed);
        assert_eq!(shown.number_choices, None);
        let answer = |n: Option<u32>| {
            response_for(
                &shown,
                Decision::Approve,
                n,
                vec!["fpt".to_string()],
                DeviceSignals::default(),
                None,
                150,
            )
        };
        assert_eq!(answer(Some(47)).unwrap().selected_number, Some(47));
        assert!(answer(None).is_err(), "typed mode needs a number");
        assert!(answer(Some(7)).is_err(), "two digits");
        assert!(answer(Some(100)).is_err(), "two digits");

        // Choices with the typed mode, or the choice mode without choices, are malformed.
        let mut typed_with_choices = typed.clone();
        typed_with_choices.number_choices = Some(vec![11, 22, 33]);
        assert!(matches!(
            check(&f, &typed_with_choices, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        let mut choice_without = typed.clone();
        choice_without.number_matching = Some(NumberMatching::Choice);
        assert!(matches!(
            check(&f, &choice_without, 150),
            Err(CoreError::ReplyMismatch(_))
        ));
        // A server before the typed mode sends choices without a mode: choice.
        let mut older = request(&f, 200);
        older.number_matching = None;
        assert_eq!(
            check(&f, &older, 150).unwrap().number_matching,
            NumberMatching::Choice
        );
    }

    #[test]
    fn hidden_fields_reach_the_app_separately() {
        let f = fixture();
        let mut with_hidden = request(&f, 200);
        with_hidden.parameters.hidden_fields = vec![DisplayField {
            label: "Amount (booked)".into(),
            value: "10000.00 EUR".into(),
        }];
        with_hidden.parameters_digest = with_hidden.parameters.digest().unwrap();
        let shown = check(&f, &with_hidden, 150).unwrap();
        assert_eq!(shown.fields, with_hidden.parameters.fields);
        assert_eq!(shown.hidden_fields, with_hidden.parameters.hidden_fields);
    }
}
