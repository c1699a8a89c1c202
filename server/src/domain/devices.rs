//! Devices and users: what a paired device may do to its own enrollment (read its status, unpair,
//! register a push token), the server's keys it pins, and what the customer may do to a user and
//! their devices (create and read the user, list, remove, choose the primary device).

use std::time::Duration;

use tessera_protocol::api::{
    CreateUserRequest, DeviceList, EnrollmentState, EnrollmentStatus, ServerKeysResponse, User,
};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, EnrollmentId, UserId};
use tessera_protocol::pairing::PushRegistration;

use super::events::{Topic, wait_for};
use super::{Ctx, DomainError, device_verification, outcome};
use crate::store::StoreError;
use crate::store::authentications;
use crate::store::enrollments::{self, Enrollment};
use crate::store::users;

const MAX_DISPLAY_NAME: usize = 256;

/// The server's current signing keys, plain and signed for the device to pin, with the chain
/// of signed key sets a device that pinned an older set follows (all signed once, when the keys
/// changed).
pub(crate) fn server_keys(ctx: &Ctx) -> Result<ServerKeysResponse, DomainError> {
    Ok(ServerKeysResponse {
        issuer: ctx.public_url.clone(),
        keys: ctx.keys.public_set(),
        signed_key_set: ctx.keys.signed_key_set(),
        key_set_chain: ctx.keys.chain(),
    })
}

fn status_of(enrollment: Enrollment) -> EnrollmentStatus {
    EnrollmentStatus {
        enrollment_id: enrollment.enrollment_id,
        user_id: enrollment.user_id,
        application_id: enrollment.application_id,
        status: enrollment.status,
    }
}

/// Whether the (authenticated) device's `enrollment` is active, waiting for the user's primary
/// device to approve it, or rejected. With `wait`, a pending verification is held until it is
/// settled, until the verification request expires, or until `wait` has passed; waiting reads
/// the database only when the enrollment is announced as changed (and once at the deadline).
pub(crate) async fn enrollment_status(
    ctx: &Ctx,
    enrollment: Enrollment,
    wait: Duration,
) -> Result<EnrollmentStatus, DomainError> {
    let current = device_verification::settled(ctx, enrollment).await?;
    if current.status != EnrollmentState::PendingVerification || wait.is_zero() {
        return Ok(status_of(current));
    }
    // An expiry nobody answered is settled by the next read: wait no longer than that.
    let wait = match &current.verification_id {
        Some(verification) => match authentications::get(&ctx.db, verification, ctx.now()).await? {
            Some(request) => wait.min(ctx.until(request.expires_at)),
            None => wait,
        },
        None => wait,
    };
    let id = current.enrollment_id.clone();
    let latest = wait_for(
        &ctx.events,
        Topic::Enrollment(id.to_string()),
        wait,
        || async {
            match enrollments::by_id(&ctx.db, &id).await? {
                Some(latest) => device_verification::settled(ctx, latest).await.map(Some),
                None => Ok::<_, DomainError>(None),
            }
        },
        |latest| {
            latest
                .as_ref()
                .is_none_or(|e| e.status != EnrollmentState::PendingVerification)
        },
    )
    .await?;
    // Gone meanwhile: answer what was last known.
    Ok(status_of(latest.unwrap_or(current)))
}

/// The (authenticated) device unpairs itself. Unpaired meanwhile by another call (the
/// customer's, or a copy of this one), it is answered the same, and nothing more is recorded:
/// the unpairing that removed it recorded its removal.
pub(crate) async fn unpair(ctx: &Ctx, enrollment: &Enrollment) -> Result<(), DomainError> {
    let Some(unpaired) = enrollments::delete(
        &ctx.db,
        &enrollment.application_id,
        None,
        &enrollment.enrollment_id,
    )
    .await?
    else {
        tracing::info!(enrollment_id = %enrollment.enrollment_id, "device unpaired itself: already unpaired");
        return Ok(());
    };
    outcome::failed(ctx, &unpaired.failed).await?;
    super::audit::device_removed(
        ctx,
        enrollment.application_id.as_str(),
        enrollment.user_id.as_str(),
        enrollment.enrollment_id.as_str(),
        super::audit::Actor::Device,
    )
    .await;
    tokens_revoked(&enrollment.application_id, &unpaired);
    tracing::info!(enrollment_id = %enrollment.enrollment_id, "device unpaired itself");
    Ok(())
}

/// The (authenticated) device registers a new push token (or another provider, or none); a
/// stale token is forgotten and pushes resume.
pub(crate) async fn update_push(
    ctx: &Ctx,
    enrollment: &EnrollmentId,
    push: &PushRegistration,
) -> Result<(), DomainError> {
    if !super::pairing::push_token_ok(push) {
        return Err(DomainError::new(
            ErrorCode::InvalidRequest,
            "the push token is invalid",
        ));
    }
    if !enrollments::set_push(&ctx.db, enrollment, push).await? {
        return Err(DomainError::new(
            ErrorCode::Unauthorized,
            "a valid device signature is required",
        ));
    }
    tracing::info!(enrollment_id = %enrollment, provider = push.provider(), "device registered a push token");
    Ok(())
}

/// What a new user's id and display name must be (`invalid_request` otherwise). Both reach a
/// device's screen (the QR login's user picker, the user-verification prompt), so both
/// must read as they render (docs/protocol.md, "Displayed text"). Checked only where a user is
/// created: users stored before the rule are still read and served.
pub(crate) fn check_new_user(
    user_id: &UserId,
    display_name: Option<&str>,
) -> Result<(), DomainError> {
    // The id arrived parsed as any stored id is (`UserId`'s lenient parse); a new one is held
    // to `UserId::parse_new`'s rule besides.
    if !user_id.is_displayable() {
        return Err(DomainError::new(
            ErrorCode::InvalidRequest,
            "invalid user id",
        ));
    }
    if display_name.is_some_and(|n| {
        n.chars().count() > MAX_DISPLAY_NAME || !tessera_protocol::display::is_displayable(n)
    }) {
        return Err(DomainError::new(
            ErrorCode::InvalidRequest,
            "invalid display name",
        ));
    }
    Ok(())
}

/// Creates a user of `app`; `user_already_exists` if the id is taken.
pub(crate) async fn create_user(
    ctx: &Ctx,
    app: &ApplicationId,
    request: &CreateUserRequest,
) -> Result<User, DomainError> {
    check_new_user(&request.user_id, request.display_name.as_deref())?;
    super::users::check_locale(request.locale.as_deref())?;
    match users::insert(
        &ctx.db,
        app,
        &request.user_id,
        request.display_name.as_deref(),
        request.locale.as_deref(),
        ctx.now(),
    )
    .await
    {
        Ok(user) => Ok(user),
        Err(StoreError::AlreadyExists(_)) => Err(DomainError::new(
            ErrorCode::UserAlreadyExists,
            "a user with this id already exists",
        )),
        Err(e) => Err(e.into()),
    }
}

/// One user of `app`, or `user_not_found`.
pub(crate) async fn get_user(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<User, DomainError> {
    super::users::require_user(ctx, app, user_id).await
}

/// The user's paired devices (active and pending verification, pending ones settled).
pub(crate) async fn user_devices(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<DeviceList, DomainError> {
    super::users::require_user(ctx, app, user_id).await?;
    let devices = device_verification::user_devices(ctx, app, user_id)
        .await?
        .iter()
        .map(Enrollment::record)
        .collect();
    Ok(DeviceList { devices })
}

fn device_not_found() -> DomainError {
    DomainError::new(ErrorCode::DeviceNotFound, "no such device for this user")
}

/// Unpairs one of the user's devices (`enrollment_id` as the customer sent it);
/// `device_not_found` if it is not one of theirs.
pub(crate) async fn remove_device(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    enrollment_id: &str,
) -> Result<(), DomainError> {
    let enrollment_id: EnrollmentId = enrollment_id.parse().map_err(|_| device_not_found())?;
    let Some(unpaired) = enrollments::delete(&ctx.db, app, Some(user_id), &enrollment_id).await?
    else {
        return Err(device_not_found());
    };
    outcome::failed(ctx, &unpaired.failed).await?;
    super::audit::device_removed(
        ctx,
        app.as_str(),
        user_id.as_str(),
        enrollment_id.as_str(),
        super::audit::Actor::Customer,
    )
    .await;
    tokens_revoked(app, &unpaired);
    tracing::info!(enrollment_id = %enrollment_id, "device unpaired by the customer");
    Ok(())
}

/// Logs the OpenID tokens an unpairing revoked: with the user's last active device, every
/// access and refresh token issued for them by the application's clients (the device was what
/// those tokens stood for), in the unpairing's own write.
fn tokens_revoked(app: &ApplicationId, unpaired: &enrollments::Unpaired) {
    if unpaired.tokens_revoked > 0 {
        tracing::info!(application_id = %app, revoked = unpaired.tokens_revoked, "last device unpaired: the user's tokens were revoked");
    }
}

/// Removes a user of `app` (`user_not_found` if there is none): their devices, pairing codes,
/// OATH tokens, CIBA user code and OpenID tokens go with them; their pending requests fail.
pub(crate) async fn remove_user(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<(), DomainError> {
    let Some(removed) = users::delete(&ctx.db, app, user_id).await? else {
        return Err(DomainError::new(
            ErrorCode::UserNotFound,
            "no such user in this application",
        ));
    };
    // The failed requests' records went with the user: their waiters are woken (they read
    // "not found") and the endings are recorded.
    let mut topics = Vec::new();
    for failed in &removed.failed {
        topics.push(super::events::Topic::Authentication(failed.id.clone()));
        topics.push(super::events::Topic::Enrollment(
            failed.enrollment_id.clone(),
        ));
    }
    ctx.events.announce(&topics);
    for failed in &removed.failed {
        let event = super::audit::Event::webhook(
            tessera_protocol::events::EventType::AuthenticationFailed,
            super::audit::Actor::Customer,
            "failed",
        )
        .app(app)
        .user(user_id)
        .device(&failed.enrollment_id)
        .subject(&failed.id)
        .details(serde_json::json!({
            "authentication_id": failed.id,
            "status": "failed",
            "failure_reason": "user_deleted",
        }));
        super::audit::record(ctx, event).await;
    }
    for enrollment_id in &removed.enrollment_ids {
        super::audit::device_removed(
            ctx,
            app.as_str(),
            user_id.as_str(),
            enrollment_id,
            super::audit::Actor::Customer,
        )
        .await;
    }
    let event = super::audit::Event::new("user.deleted", super::audit::Actor::Customer, "success")
        .app(app)
        .user(user_id)
        .details(serde_json::json!({
            "devices": removed.enrollment_ids.len(),
            "authentications": removed.authentications,
        }));
    super::audit::record(ctx, event).await;
    tracing::info!(application_id = %app, "user removed");
    Ok(())
}

/// Makes one of the user's active devices the primary device (the one authentications go to by
/// default); answers the user's devices after the change.
pub(crate) async fn set_primary(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    enrollment_id: &str,
) -> Result<DeviceList, DomainError> {
    let enrollment_id: EnrollmentId = enrollment_id.parse().map_err(|_| device_not_found())?;
    if !enrollments::set_primary(&ctx.db, app, user_id, &enrollment_id).await? {
        return Err(device_not_found());
    }
    let devices = enrollments::list_for_user(&ctx.db, app, user_id)
        .await?
        .iter()
        .map(Enrollment::record)
        .collect();
    Ok(DeviceList { devices })
}

#[cfg(test)]
mod tests {
    use tessera_protocol::api::CreateUserRequest;
    use tessera_protocol::error::ErrorCode;
    use tessera_protocol::ids::UserId;

    use crate::domain::testing::{TestDomain, sent_at_once};

    fn new_user(id: &str, display_name: Option<&str>) -> CreateUserRequest {
        CreateUserRequest {
            // Parsed as a caller's JSON body is: the lenient parse, as before.
            user_id: id.parse().expect("user id"),
            display_name: display_name.map(str::to_string),
            locale: None,
        }
    }

    /// A display name or a user id that would render differently than it reads (a
    /// right-to-left override, an isolate, a zero-width character) is refused when the user is
    /// created, and nothing is stored; names and ids in any script are created.
    #[tokio::test]
    async fn users_whose_id_or_display_name_renders_differently_are_refused() {
        for domain in TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            let app = &domain.app.id;
            for (id, name) in [
                ("mallory", Some("Alice \u{202E}nimda")),
                ("mallory", Some("Bob\u{2066}evil\u{2069}")),
                ("mallory", Some("ad\u{200B}min")),
                ("a\u{202E}b", None),
                ("a\u{202E}b", Some("Alice")),
                ("ali\u{200D}ce", None),
            ] {
                let refused = super::create_user(&domain.ctx, app, &new_user(id, name))
                    .await
                    .expect_err("refused");
                assert_eq!(
                    refused.code(),
                    Some(ErrorCode::InvalidRequest),
                    "{engine:?}: {id:?} {name:?}"
                );
                let user: UserId = id.parse().expect("user id");
                assert!(
                    crate::store::users::get(&domain.ctx.db, app, &user)
                        .await
                        .expect("read")
                        .is_none(),
                    "{engine:?}: {id:?} was stored"
                );
            }
            for (id, name) in [
                ("alice", Some("Alice Müller")),
                ("张伟", Some("张伟")),
                ("משה", Some("משה כהן")),
                ("محمد", Some("محمد 👍")),
            ] {
                let created = super::create_user(&domain.ctx, app, &new_user(id, name))
                    .await
                    .expect("created");
                assert_eq!(created.display_name.as_deref(), name, "{engine:?}");
            }
        }
    }

    /// A user stored before the rule, with an id that would be refused now, is still read and
    /// listed, and the application's other users with it.
    #[tokio::test]
    async fn users_stored_before_the_rule_are_still_served() {
        for domain in TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            let app = &domain.app.id;
            let legacy = domain.user("a\u{202E}b").await;
            domain.user("bob").await;
            assert!(
                super::get_user(&domain.ctx, app, &legacy).await.is_ok(),
                "{engine:?}"
            );
            let listed = crate::store::users::list(&domain.ctx.db, app)
                .await
                .expect("listed");
            assert_eq!(listed.len(), 2, "{engine:?}");
        }
    }

    /// How many `device.removed` records name `enrollment`.
    async fn removals_recorded(domain: &TestDomain, enrollment: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE kind = 'device.removed' AND device_id = $1",
        )
        .bind(enrollment)
        .fetch_one(domain.ctx.db.pool())
        .await
        .expect("count")
    }

    /// A device that unpairs itself again (a retry after a lost reply, or copies sent at once)
    /// is answered as the first time, and its removal is recorded (and sent to the customer's
    /// webhook) once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_device_unpairing_itself_again_records_its_removal_once() {
        for domain in TestDomain::each_engine().await {
            let engine = domain.ctx.db.engine();
            let (_, phone) = domain.user_with_device("quinn").await;
            super::unpair(&domain.ctx, &phone.enrollment)
                .await
                .expect("unpaired");
            super::unpair(&domain.ctx, &phone.enrollment)
                .await
                .expect("answered as before");
            let id = phone.enrollment.enrollment_id.to_string();
            assert_eq!(
                removals_recorded(&domain, &id).await,
                1,
                "{engine:?}: a retry"
            );

            let (_, tablet) = domain.user_with_device("rosa").await;
            let answers = sent_at_once(4, || {
                let (ctx, enrollment) = (domain.ctx.clone(), tablet.enrollment.clone());
                async move { super::unpair(&ctx, &enrollment).await }
            })
            .await;
            assert!(answers.iter().all(Result::is_ok), "{engine:?}: {answers:?}");
            let id = tablet.enrollment.enrollment_id.to_string();
            assert_eq!(
                removals_recorded(&domain, &id).await,
                1,
                "{engine:?}: copies sent at once"
            );
        }
    }
}
