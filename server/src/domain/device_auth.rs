//! Device-signed calls: a device proves each call with its enrollment's possession key.

use tessera_protocol::PROTOCOL_VERSION;
use tessera_protocol::canonical::Sha256Digest;
use tessera_protocol::device_auth::{
    AUTHORIZATION_SCHEME, DEVICE_REQUEST_WINDOW_SECONDS, DeviceRequestClaims,
};
use tessera_protocol::envelope::{self, MessageType};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::EnrollmentId;

use super::{Ctx, DomainError};
use crate::store::enrollments::{self, Enrollment};
use crate::store::nonces;

/// Verifies `jws`, a message of type `typ`, with `enrollment`'s possession key (the key id it
/// names must be that key's). Its payload, or `None` when it is malformed or does not verify.
pub(crate) fn verify_possession_signed<T: serde::de::DeserializeOwned>(
    jws: &str,
    typ: MessageType,
    enrollment: &Enrollment,
) -> Option<T> {
    let header = envelope::inspect(jws).ok()?;
    if header.kid != enrollment.possession_key.thumbprint() {
        return None;
    }
    envelope::verify::<T>(jws, typ, &enrollment.possession_key)
        .ok()
        .map(|verified| verified.payload)
}

/// What a device-signed call consists of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceCall<'a> {
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a str>,
    /// The HTTP method.
    pub method: &'a str,
    /// The request path (no query).
    pub path: &'a str,
    /// The request body.
    pub body: &'a [u8],
}

/// Authenticates a device-signed call: the signature by the enrollment's possession key, the
/// method, path and body it binds, its freshness, and a nonce never seen before. Any failure
/// that could tell an attacker whether an enrollment exists answers the same `unauthorized`.
pub(crate) async fn authenticate(
    ctx: &Ctx,
    call: DeviceCall<'_>,
) -> Result<Enrollment, DomainError> {
    let conn = ctx.db.reader().await?;
    Ok(authenticate_on(ctx, conn, call).await?.0)
}

/// [`authenticate`] on `conn`, a connection the request keeps for what it does next (returned
/// with the enrollment): the enrollment is read on it and, on PostgreSQL, the call's nonce and
/// last-seen time are written on it (on SQLite on the writer). On a failure the connection is
/// given back to the pool before anything else (the audit record takes its own).
pub(crate) async fn authenticate_on(
    ctx: &Ctx,
    conn: crate::store::ReadConn,
    call: DeviceCall<'_>,
) -> Result<(Enrollment, crate::store::ReadConn), DomainError> {
    let (enrollment, mut conn, nonce) = verify_on(ctx, conn, call).await?;
    nonce.record(ctx, &mut conn).await?;
    Ok((enrollment, conn))
}

/// [`authenticate`] for a call that reads twice: `early`, which needs nothing of the
/// enrollment, goes out beside the enrollment's read, and `read` (given the verified enrollment
/// and what `early` read) beside the call's nonce. On PostgreSQL a call that read the enrollment,
/// then its own first read beside the nonce, then a second read, waits for two round trips where
/// it waited for three. What either read reaches only a call whose signature verified and whose
/// nonce was new: a replayed call gets `replayed_message` (before any refusal of `read`) and
/// nothing read.
///
/// Each read takes a connection of its own and gives it back as soon as it has its rows (the
/// enrollment's too, before `early` is waited for): no connection is held while the request
/// waits for another.
pub(crate) async fn authenticate_reading_twice<E, T, Early, Read, Fut>(
    ctx: &Ctx,
    call: DeviceCall<'_>,
    early: Early,
    read: Read,
) -> Result<(Enrollment, T), DomainError>
where
    Early: std::future::Future<Output = Result<E, crate::store::StoreError>>,
    Read: FnOnce(Enrollment, E) -> Fut,
    Fut: std::future::Future<Output = Result<T, DomainError>>,
{
    let (verified, early) = tokio::join!(
        async {
            let conn = ctx.db.reader().await?;
            let (enrollment, conn, nonce) = verify_on(ctx, conn, call).await?;
            drop(conn);
            Ok::<_, DomainError>((enrollment, nonce))
        },
        early,
    );
    let (enrollment, nonce) = verified?;
    let early = early?;
    let (recorded, read) = tokio::join!(
        async {
            let mut conn = ctx.db.reader().await?;
            nonce.record(ctx, &mut conn).await
        },
        read(enrollment.clone(), early),
    );
    recorded?;
    Ok((enrollment, read?))
}

/// [`authenticate`] for a call whose first read of its own is made in the same statement as
/// the enrollment's: `read_with` reads the enrollment the call names (not verified yet: its
/// signature is checked on what this read returns) with what the call needs of it, `None` when
/// there is no such enrollment. On PostgreSQL the call is then two statements (that read, the
/// nonce) where it was three (the enrollment, then the nonce beside its own read). What was read
/// reaches only a call whose signature verified and whose nonce was new: a replayed call gets
/// `replayed_message` and nothing read. The read runs on a pooled connection of its own, given
/// back once read, and the nonce on another.
pub(crate) async fn authenticate_reading_with<T, Fut>(
    ctx: &Ctx,
    call: DeviceCall<'_>,
    read_with: impl FnOnce(EnrollmentId) -> Fut,
) -> Result<(Enrollment, T), DomainError>
where
    Fut: std::future::Future<Output = Result<Option<(Enrollment, T)>, crate::store::StoreError>>,
{
    let (jws, claimed) = claimed(call)?;
    let (enrollment, read) = read_with(claimed.enrollment_id)
        .await?
        .ok_or_else(unauthorized)?;
    let nonce = match verify_read(&enrollment, call, jws, ctx.now()) {
        Ok(nonce) => nonce,
        Err(refusal) => return Err(refused(ctx, &enrollment, refusal).await),
    };
    let mut conn = ctx.db.reader().await?;
    nonce.record(ctx, &mut conn).await?;
    Ok((enrollment, read))
}

/// A verified call's nonce, still to be recorded ([`CallNonce::record`]).
struct CallNonce {
    key: String,
    expires_at: i64,
    now: i64,
    /// The enrollment whose last-seen time is due to be written with the nonce.
    touch: Option<EnrollmentId>,
}

impl CallNonce {
    /// Records the nonce (and the last-seen time when due) on `conn`: `replayed_message` if the
    /// nonce was seen before.
    async fn record(
        &self,
        ctx: &Ctx,
        conn: &mut crate::store::ReadConn,
    ) -> Result<(), DomainError> {
        let fresh = nonces::record_call(
            &ctx.db,
            conn,
            &self.key,
            self.expires_at,
            self.now,
            self.touch.as_ref(),
        )
        .await?;
        if fresh {
            Ok(())
        } else {
            Err(DomainError::new(
                ErrorCode::ReplayedMessage,
                "this device request was already used",
            ))
        }
    }
}

/// Everything [`authenticate_on`] checks but the nonce, which it returns to be recorded.
async fn verify_on(
    ctx: &Ctx,
    mut conn: crate::store::ReadConn,
    call: DeviceCall<'_>,
) -> Result<(Enrollment, crate::store::ReadConn, CallNonce), DomainError> {
    let (jws, claimed) = claimed(call)?;
    let enrollment = enrollments::by_id_on(&mut *conn, &claimed.enrollment_id)
        .await?
        .ok_or_else(unauthorized)?;
    let nonce = match verify_read(&enrollment, call, jws, ctx.now()) {
        Ok(nonce) => nonce,
        Err(e) => {
            drop(conn);
            return Err(refused(ctx, &enrollment, e).await);
        }
    };
    Ok((enrollment, conn, nonce))
}

/// The one refusal of every failure that could tell an attacker whether an enrollment exists.
fn unauthorized() -> DomainError {
    DomainError::new(
        ErrorCode::Unauthorized,
        "a valid device signature is required",
    )
}

/// The signed call's JWS and the claims it makes, not verified yet (they name the enrollment to
/// read).
fn claimed(call: DeviceCall<'_>) -> Result<(&str, DeviceRequestClaims), DomainError> {
    let jws = call
        .authorization
        .and_then(|v| v.strip_prefix(AUTHORIZATION_SCHEME))
        .and_then(|v| v.strip_prefix(' '))
        .ok_or_else(unauthorized)?;
    let claimed: DeviceRequestClaims =
        envelope::unverified_payload(jws).map_err(|_| unauthorized())?;
    Ok((jws, claimed))
}

/// Why [`verify_read`] refused a call.
enum Refusal {
    /// The signature is not the enrollment's (audited as a signature failure).
    BadSignature,
    /// Anything else, as answered.
    Other(DomainError),
}

/// The refusal a call gets for `refusal`, the failed signature audited first.
async fn refused(ctx: &Ctx, enrollment: &Enrollment, refusal: Refusal) -> DomainError {
    match refusal {
        Refusal::BadSignature => {
            super::audit::signature_failed(ctx, enrollment, None, "device_request").await;
            unauthorized()
        }
        Refusal::Other(e) => e,
    }
}

/// Checks the call `jws` against `enrollment` as read (the enrollment its claims name): the
/// signature by its possession key, the method, path and body, the freshness at `now`, the
/// nonce's shape. The nonce to record, or why the call is refused.
fn verify_read(
    enrollment: &Enrollment,
    call: DeviceCall<'_>,
    jws: &str,
    now: i64,
) -> Result<CallNonce, Refusal> {
    let Some(claims) = verify_possession_signed::<DeviceRequestClaims>(
        jws,
        MessageType::DeviceRequest,
        enrollment,
    ) else {
        return Err(Refusal::BadSignature);
    };
    if claims.v != PROTOCOL_VERSION
        || claims.method != call.method
        || claims.path != call.path
        || !claims.body_digest.ct_eq(&Sha256Digest::of_bytes(call.body))
    {
        return Err(Refusal::Other(DomainError::new(
            ErrorCode::InvalidSignature,
            "the device signature does not match this request",
        )));
    }
    if (claims.issued_at - now).abs() > DEVICE_REQUEST_WINDOW_SECONDS {
        return Err(Refusal::Other(DomainError::new(
            ErrorCode::StaleMessage,
            "the device signature is too old or from the future",
        )));
    }
    if claims.nonce.is_empty() || claims.nonce.len() > 64 {
        return Err(Refusal::Other(unauthorized()));
    }
    let nonce_key = nonces::call_key(enrollment.enrollment_id.as_str(), &claims.nonce);
    let expires = claims.issued_at + DEVICE_REQUEST_WINDOW_SECONDS + 60;
    // "Last seen" is kept to the minute: most calls have nothing to write but their nonce.
    let touch = (enrollment.last_seen_at <= now - enrollments::LAST_SEEN_RESOLUTION)
        .then(|| enrollment.enrollment_id.clone());
    Ok(CallNonce {
        key: nonce_key,
        expires_at: expires,
        now,
        touch,
    })
}

/// The enrollment a device-signed call names in its path: the signing one, or `unauthorized`
/// (as `http::extract::same_enrollment` answers).
pub(crate) fn same_enrollment(
    enrollment: &Enrollment,
    raw: &str,
) -> Result<EnrollmentId, DomainError> {
    match raw.parse::<EnrollmentId>() {
        Ok(id) if id == enrollment.enrollment_id => Ok(id),
        _ => Err(DomainError::new(
            ErrorCode::Unauthorized,
            "a valid device signature is required",
        )),
    }
}

#[cfg(test)]
mod tests;
