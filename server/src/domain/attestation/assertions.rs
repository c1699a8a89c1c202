//! App Attest assertions on answers: an iOS enrollment whose pairing was App Attested by a
//! registered app proves each later answer (to a push request or a QR login) with an assertion
//! of that App Attest key, made over the answer's `clientDataHash` (SHA-256 of its canonical
//! JSON without the assertion; see `AuthenticationResponse::app_attest_client_data_hash` and
//! `QrResponse::app_attest_client_data_hash`). The counter the assertion carries is taken
//! atomically by the answer's write (`store::enrollments::take_app_attest_counter`), so of two
//! answers carrying one counter only one is accepted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tessera_protocol::api::AttestationMode;
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::error::ErrorCode;

use super::AttestationError;
use super::apple;
use crate::domain::{Ctx, DomainError};
use crate::store::applications;
use crate::store::enrollments::{self, Enrollment};

/// The most characters an answer's `app_attest_assertion` may have (base64url of 4 KiB).
const MAX_ASSERTION_CHARS: usize = 4 * 1024 * 4 / 3 + 4;

/// What an answer's App Attest check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AssertionCheck {
    /// Nothing to take: the application's attestation is `off`, the enrollment has no App
    /// Attest key (Android, not attested, or an app the application did not register), or the
    /// answer carries no assertion and none is asked for.
    Nothing,
    /// The assertion verified against the stored counter as read now: its counter, which the
    /// answer's write takes atomically.
    Take(u32),
    /// Refused: the error code and the check that failed (see [`refuse`]).
    Refused(ErrorCode, String),
}

/// Where an answer's App Attest check is made: the answer's assertion and the hash it must be
/// made over, and whether its request's policy asks for an assertion.
pub(crate) struct AnswerAssertion<'a> {
    /// The enrollment that answered.
    pub device: &'a Enrollment,
    /// The answer's `app_attest_assertion` (the answer's signature already verified with the
    /// enrollment's key).
    pub assertion: Option<&'a str>,
    /// The answer's `clientDataHash`: SHA-256 of its canonical JSON without the assertion
    /// (`None` when the answer has no canonical form: an assertion is then refused as malformed).
    pub client_data_hash: Option<Sha256Digest>,
    /// The policy decision of the request asked for an assertion (`require` with
    /// `app_attest_assertion: true`).
    pub required_by_policy: bool,
    /// The authentication or QR session answered (the audit record's subject).
    pub answered_id: &'a str,
    /// The device's address (for the audit record).
    pub client_ip: &'a str,
}

/// Checks an answer's App Attest assertion (see [`AssertionCheck`]). Refusals are typed
/// (`app_attest_assertion_required`, `app_attest_assertion_invalid`,
/// `app_attest_counter_replay`); the caller turns one into its error with [`refuse`] (which
/// audits it) unless the answer is the very one already recorded (a retry).
pub(crate) async fn check_answer(
    conn: &mut crate::store::ReadHandle,
    answer: &AnswerAssertion<'_>,
) -> Result<AssertionCheck, DomainError> {
    // The key first (read with the enrollment): most enrollments have none, and then the
    // settings need no read.
    let Some(key) = &answer.device.app_attest else {
        return Ok(AssertionCheck::Nothing);
    };
    let settings =
        applications::attestation_settings_on(&mut *conn, &answer.device.application_id).await?;
    if settings.mode == AttestationMode::Off {
        return Ok(AssertionCheck::Nothing);
    }
    let required = settings.mode == AttestationMode::Require || answer.required_by_policy;
    Ok(match answer.assertion {
        None if required => AssertionCheck::Refused(
            ErrorCode::AppAttestAssertionRequired,
            "the answer of an App Attested device carries no App Attest assertion".into(),
        ),
        None => AssertionCheck::Nothing,
        Some(encoded) => {
            let app_id_hashes: Vec<[u8; 32]> =
                settings.apple_apps.iter().map(apple::app_id_hash).collect();
            match verify(encoded, answer.client_data_hash, key, &app_id_hashes) {
                Ok(counter) => AssertionCheck::Take(counter),
                Err(e @ AttestationError::CounterReplay) => {
                    AssertionCheck::Refused(ErrorCode::AppAttestCounterReplay, e.to_string())
                }
                Err(e) => {
                    AssertionCheck::Refused(ErrorCode::AppAttestAssertionInvalid, e.to_string())
                }
            }
        }
    })
}

/// The typed error of a refused assertion, after its audit record.
pub(crate) async fn refuse(
    ctx: &Ctx,
    answer: &AnswerAssertion<'_>,
    code: ErrorCode,
    check: &str,
) -> DomainError {
    tracing::warn!(
        enrollment_id = %answer.device.enrollment_id,
        answered_id = answer.answered_id,
        code = code.as_str(),
        "an answer's App Attest assertion was refused"
    );
    crate::domain::audit::app_attest_assertion_refused(
        ctx,
        answer.device,
        answer.answered_id,
        Some(answer.client_ip),
        code.as_str(),
        check,
    )
    .await;
    DomainError::new(code, check)
}

/// Decodes and verifies `encoded` (unpadded base64url of Apple's CBOR) over the answer's
/// `client_data_hash` with the enrollment's App Attest key and stored counter.
fn verify(
    encoded: &str,
    client_data_hash: Option<Sha256Digest>,
    key: &enrollments::AppAttestKey,
    app_id_hashes: &[[u8; 32]],
) -> Result<u32, AttestationError> {
    if encoded.len() > MAX_ASSERTION_CHARS {
        return Err(AttestationError::Malformed("the assertion is too large"));
    }
    let cbor = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AttestationError::Malformed("the assertion is not base64url"))?;
    let client_data_hash = client_data_hash.ok_or(AttestationError::Malformed(
        "the answer has no canonical form",
    ))?;
    let verified = apple::verify_assertion_cbor(
        &key.public_key,
        app_id_hashes,
        client_data_hash.as_bytes(),
        &cbor,
        key.counter,
    )?;
    Ok(verified.counter)
}
