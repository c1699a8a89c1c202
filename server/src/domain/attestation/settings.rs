//! An application's attestation settings: reading, checking and replacing them.

use tessera_protocol::api::{AttestationMode, AttestationSettings};
use tessera_protocol::error::ErrorCode;
use tessera_protocol::ids::ApplicationId;

use crate::domain::DomainError;
use crate::store::Database;
use crate::store::applications;

/// The most apps of each platform an application registers.
const MAX_APPS: usize = 32;
/// The most signing certificate digests of one Android app.
const MAX_DIGESTS: usize = 16;

fn invalid(message: &str) -> DomainError {
    DomainError::new(ErrorCode::InvalidRequest, message)
}

fn identifier_ok(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks settings: package names and bundle ids are dotted identifiers, digests 64 hex
/// characters, team ids 10 letters and digits; `require` needs at least one registered app.
pub fn check(settings: &AttestationSettings) -> Result<(), DomainError> {
    if settings.android_apps.len() > MAX_APPS || settings.apple_apps.len() > MAX_APPS {
        return Err(invalid("at most 32 apps per platform"));
    }
    for app in &settings.android_apps {
        if !identifier_ok(&app.package_name, 255) {
            return Err(invalid(
                "a package name is not a valid Android package name",
            ));
        }
        if app.signing_cert_digests.is_empty() || app.signing_cert_digests.len() > MAX_DIGESTS {
            return Err(invalid(
                "an Android app needs 1 to 16 signing certificate digests",
            ));
        }
        if !app
            .signing_cert_digests
            .iter()
            .all(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                "a signing certificate digest is not 64 hexadecimal characters (SHA-256)",
            ));
        }
    }
    for app in &settings.apple_apps {
        if app.team_id.len() != 10 || !app.team_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid("a team id is not 10 letters and digits"));
        }
        if !identifier_ok(&app.bundle_id, 255) {
            return Err(invalid("a bundle id is not a valid bundle identifier"));
        }
    }
    if settings.mode == AttestationMode::Require
        && settings.android_apps.is_empty()
        && settings.apple_apps.is_empty()
    {
        return Err(invalid(
            "attestation `require` needs at least one registered Android or iOS app",
        ));
    }
    Ok(())
}

/// The application's attestation settings.
pub(crate) async fn get(
    db: &Database,
    app: &ApplicationId,
) -> Result<AttestationSettings, DomainError> {
    Ok(applications::attestation_settings(db, app).await?)
}

/// Replaces the application's attestation settings after [`check`]ing them; digests are stored
/// lowercase.
pub(crate) async fn set(
    db: &Database,
    app: &ApplicationId,
    mut settings: AttestationSettings,
) -> Result<AttestationSettings, DomainError> {
    check(&settings)?;
    for android in &mut settings.android_apps {
        for digest in &mut android.signing_cert_digests {
            digest.make_ascii_lowercase();
        }
    }
    if !applications::set_attestation_settings(db, app, &settings).await? {
        return Err(DomainError::new(ErrorCode::NotFound, "no such application"));
    }
    Ok(settings)
}
