//! Administration, used by the `tessera-server admin` command and by tests and examples.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tessera_protocol::api::{CreatedApplication, DeviceRecord, User};
use tessera_protocol::ids::{ApplicationId, UserId};
use zeroize::Zeroizing;

use crate::db::applications::{self, Application, api_key_digest};
use crate::db::{Database, enrollments, users};
use crate::error::ServerError;

fn new_api_key() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(format!("tsk_{}", URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

/// Registers an application. Its API key is returned once; only its digest is stored.
pub async fn create_application(
    db: &Database,
    name: &str,
) -> Result<CreatedApplication, ServerError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ServerError::InvalidInput(
            "application name must be 1 to 128 characters".into(),
        ));
    }
    let app = Application {
        id: ApplicationId::generate(),
        name: name.to_string(),
        created_at: tessera_protocol::time::now(),
    };
    let api_key = new_api_key();
    applications::insert(db, &app, &api_key_digest(&api_key)).await?;
    Ok(CreatedApplication {
        application_id: app.id,
        name: app.name,
        api_key: api_key.to_string(),
    })
}

/// All applications.
pub async fn list_applications(db: &Database) -> Result<Vec<Application>, ServerError> {
    applications::list(db).await
}

/// Issues a new API key for an application; the old one stops working at once.
pub async fn rotate_api_key(
    db: &Database,
    id: &ApplicationId,
) -> Result<CreatedApplication, ServerError> {
    let app = applications::get(db, id)
        .await?
        .ok_or(ServerError::NotFound("application"))?;
    let api_key = new_api_key();
    if !applications::set_api_key_digest(db, id, &api_key_digest(&api_key)).await? {
        return Err(ServerError::NotFound("application"));
    }
    Ok(CreatedApplication {
        application_id: app.id,
        name: app.name,
        api_key: api_key.to_string(),
    })
}

/// Creates a user in an application.
pub async fn create_user(
    db: &Database,
    app: &ApplicationId,
    user_id: &UserId,
    display_name: Option<&str>,
) -> Result<User, ServerError> {
    applications::get(db, app)
        .await?
        .ok_or(ServerError::NotFound("application"))?;
    users::insert(
        db,
        app,
        user_id,
        display_name,
        tessera_protocol::time::now(),
    )
    .await
}

/// An application's users.
pub async fn list_users(db: &Database, app: &ApplicationId) -> Result<Vec<User>, ServerError> {
    users::list(db, app).await
}

/// A user's devices.
pub async fn list_devices(
    db: &Database,
    app: &ApplicationId,
    user: &UserId,
) -> Result<Vec<DeviceRecord>, ServerError> {
    Ok(enrollments::list_for_user(db, app, user)
        .await?
        .iter()
        .map(enrollments::Enrollment::record)
        .collect())
}

/// Sets or clears the application's push webhook (`http(s)://…`): every push for its devices is
/// POSTed there as JSON, for the customer to relay to the app.
pub async fn set_push_webhook(
    db: &Database,
    app: &ApplicationId,
    url: Option<&str>,
) -> Result<(), ServerError> {
    if let Some(url) = url {
        tessera_protocol::pairing::ServerUrl::parse(url).map_err(|_| {
            ServerError::InvalidInput(
                "the webhook must be an http(s) URL without query or credentials".into(),
            )
        })?;
    }
    if applications::set_push_webhook(db, app, url).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets how the application pairs a user's further devices: each on its own, or verified by the
/// user's primary device.
pub async fn set_additional_device_policy(
    db: &Database,
    app: &ApplicationId,
    policy: applications::AdditionalDevicePolicy,
) -> Result<(), ServerError> {
    if applications::set_additional_device_policy(db, app, policy).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}

/// Sets what the application asks after a QR login is approved: nothing more, a silent
/// verification of the device, or a push approval to the user.
pub async fn set_qr_policy(
    db: &Database,
    app: &ApplicationId,
    policy: applications::QrPolicy,
) -> Result<(), ServerError> {
    if applications::set_qr_policy(db, app, policy).await? {
        Ok(())
    } else {
        Err(ServerError::NotFound("application"))
    }
}
