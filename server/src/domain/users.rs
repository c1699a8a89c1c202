//! Users of an application.

use tessera_protocol::api::User;
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::{ApplicationId, UserId};

use super::{Ctx, DomainError};
use crate::store::users;

/// `user_not_found`: the application has no such user (none was found, or a deletion came
/// first).
pub(crate) fn user_not_found() -> DomainError {
    DomainError::new(ErrorCode::UserNotFound, "no such user in this application")
}

/// The user, or `user_not_found`.
pub(crate) async fn require_user(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
) -> Result<User, DomainError> {
    users::get(&ctx.db, app, user_id)
        .await?
        .ok_or_else(user_not_found)
}

/// Locks `user_id` for the write `w` ([`users::lock`], held until it commits):
/// `user_not_found` when there is no such user (a deletion that came first); the write is then
/// the caller's to drop.
pub(crate) async fn lock_in(
    w: &mut crate::store::Write<'_>,
    app: &ApplicationId,
    user_id: &UserId,
    how: users::UserLock,
) -> Result<(), DomainError> {
    let engine = w.engine();
    if users::lock(&mut **w, engine, app, user_id, how).await? {
        Ok(())
    } else {
        Err(user_not_found())
    }
}

/// `locale` if it is a well-formed BCP 47 language tag, else `invalid_locale`.
pub(crate) fn check_locale(locale: Option<&str>) -> Result<(), DomainError> {
    match locale {
        Some(tag) if !crate::i18n::is_language_tag(tag) => Err(DomainError::new(
            ErrorCode::InvalidLocale,
            "locale must be a BCP 47 language tag such as de or fr-CA",
        )),
        _ => Ok(()),
    }
}

/// Sets (or with `None` removes) the user's preferred language; `invalid_locale` for a tag that
/// is not BCP 47, `user_not_found` for an unknown user.
pub(crate) async fn update_user(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    request: &tessera_protocol::api::UpdateUserRequest,
) -> Result<User, DomainError> {
    check_locale(request.locale.as_deref())?;
    if !users::set_locale(&ctx.db, app, user_id, request.locale.as_deref()).await? {
        return Err(DomainError::new(
            ErrorCode::UserNotFound,
            "no such user in this application",
        ));
    }
    require_user(ctx, app, user_id).await
}

/// The languages wanted for the server's own texts to `user_id`, most wanted first: the
/// request's `locale`, then the user's preferred one. An unreadable user locale is skipped (the
/// text falls back to English rather than failing the request).
pub(crate) async fn wanted_languages(
    ctx: &Ctx,
    app: &ApplicationId,
    user_id: &UserId,
    request_locale: Option<&str>,
) -> Vec<String> {
    let mut wanted: Vec<String> = request_locale.map(str::to_string).into_iter().collect();
    match users::locale(ctx.db.pool(), app, user_id).await {
        Ok(Some(tag)) => wanted.push(tag),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "the user's locale could not be read"),
    }
    wanted
}

/// [`wanted_languages`] for a user already read (its `locale` came with it).
pub(crate) fn wanted_languages_of(user: &User, request_locale: Option<&str>) -> Vec<String> {
    request_locale
        .map(str::to_string)
        .into_iter()
        .chain(user.locale.clone())
        .collect()
}

/// One of the server's own texts in the best shipped language for `wanted` (English when none
/// fits), with the language it is written in.
pub(crate) fn localized(
    wanted: &[String],
    id: &str,
    args: &[(&str, crate::i18n::Arg<'_>)],
) -> Result<(String, String), DomainError> {
    let catalog = crate::i18n::Catalog::shipped()
        .map_err(|_| DomainError::Internal("the shipped texts do not load"))?;
    let lang = catalog.negotiate(wanted, None);
    let text = catalog
        .format(&lang, id, args)
        .ok_or(DomainError::Internal("a shipped text is missing"))?;
    Ok((text, lang))
}

#[cfg(test)]
mod deletion_tests;

#[cfg(test)]
mod wanted_language_tests {
    use super::*;

    fn user(locale: Option<&str>) -> User {
        User {
            user_id: "alice".parse().expect("user id"),
            display_name: None,
            created_at: 0,
            device_count: 1,
            locale: locale.map(str::to_string),
        }
    }

    #[test]
    fn the_requests_language_comes_before_the_users() {
        assert_eq!(
            wanted_languages_of(&user(Some("fr")), Some("de")),
            ["de", "fr"]
        );
        assert_eq!(wanted_languages_of(&user(Some("fr")), None), ["fr"]);
        assert_eq!(wanted_languages_of(&user(None), Some("de")), ["de"]);
        assert!(wanted_languages_of(&user(None), None).is_empty());
    }
}
