//! How an [`crate::Authenticator`] is set up.

use std::time::Duration;

use tessera_protocol::pairing::{DeviceInfo, DeviceSignals, PushRegistration};

/// The device's description and the SDK's settings.
#[derive(Debug, Clone)]
pub struct AuthenticatorConfig {
    /// What the device says about itself (model, OS, app version).
    pub device: DeviceInfo,
    /// Posture signals the platform reports (rooted, screen lock, MDM).
    pub signals: DeviceSignals,
    /// How the server can push to this device.
    pub push: PushRegistration,
    /// Allow plain `http://` to servers that are not on loopback. Loopback (`127.0.0.1`, `::1`,
    /// `localhost`) is always allowed for development; anything else needs https unless this is
    /// set.
    pub allow_insecure_http: bool,
    /// Timeout of each HTTP call.
    pub http_timeout: Duration,
}

impl Default for AuthenticatorConfig {
    fn default() -> Self {
        Self {
            device: DeviceInfo {
                sdk_version: env!("CARGO_PKG_VERSION").to_string(),
                ..DeviceInfo::default()
            },
            signals: DeviceSignals::default(),
            push: PushRegistration::None,
            allow_insecure_http: false,
            http_timeout: Duration::from_secs(30),
        }
    }
}
