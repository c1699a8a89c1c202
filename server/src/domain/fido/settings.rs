//! An application's WebAuthn relying-party settings: read with defaults, checked before they
//! are stored (an RP id the origins can use, `https` origins (`http` only on a loopback host),
//! well-formed AAGUIDs, `direct` attestation only with an allow-list).

use tessera_protocol::fido::{FidoAttestation, FidoSettings};
use tessera_protocol::ids::ApplicationId;

use super::super::DomainError;
use crate::store::Database;
use crate::store::fido_credentials as store;

/// At most this many origins and AAGUIDs.
const MAX_ENTRIES: usize = 32;

/// The application's settings (defaults when never set).
pub(crate) async fn get(db: &Database, app: &ApplicationId) -> Result<FidoSettings, DomainError> {
    Ok(store::settings(db, app).await?)
}

/// Checks and replaces the application's settings; answers them as stored.
pub(crate) async fn set(
    db: &Database,
    app: &ApplicationId,
    mut settings: FidoSettings,
) -> Result<FidoSettings, DomainError> {
    check(&mut settings)?;
    store::set_settings(db, app, &settings).await?;
    Ok(settings)
}

/// Whether `aaguid` is written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex; normalised to
/// lower case by [`check`]).
fn is_aaguid(aaguid: &str) -> bool {
    let groups: Vec<&str> = aaguid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check(settings: &mut FidoSettings) -> Result<(), DomainError> {
    if settings.allowed_origins.len() > MAX_ENTRIES || settings.allowed_aaguids.len() > MAX_ENTRIES
    {
        return Err(DomainError::invalid(format!(
            "at most {MAX_ENTRIES} allowed_origins and allowed_aaguids"
        )));
    }
    if let Some(rp_id) = &settings.rp_id {
        let ok = !rp_id.is_empty()
            && rp_id.len() <= 253
            && rp_id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !rp_id.starts_with('.')
            && !rp_id.ends_with('.');
        if !ok {
            return Err(DomainError::invalid(
                "rp_id must be a lower-case domain name (no scheme, port or path)",
            ));
        }
    }
    for origin in &settings.allowed_origins {
        let url = url::Url::parse(origin)
            .map_err(|_| DomainError::invalid("allowed_origins must be absolute origins"))?;
        let serialised = url.origin().ascii_serialization();
        if serialised != *origin {
            return Err(DomainError::invalid(format!(
                "allowed_origins must be written as scheme://host[:port] with nothing else ({origin})"
            )));
        }
        let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(DomainError::invalid(
                "allowed_origins must be https (http only on a loopback host)",
            ));
        }
        if let (Some(rp_id), Some(host)) = (&settings.rp_id, url.host_str())
            && host != rp_id
            && !host.ends_with(&format!(".{rp_id}"))
        {
            return Err(DomainError::invalid(format!(
                "the origin {origin} is not on the rp_id {rp_id} or one of its subdomains"
            )));
        }
    }
    for aaguid in settings.allowed_aaguids.iter_mut() {
        if !is_aaguid(aaguid) {
            return Err(DomainError::invalid(
                "allowed_aaguids must be written xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            ));
        }
        *aaguid = aaguid.to_ascii_lowercase();
    }
    if settings.attestation == FidoAttestation::Direct && settings.allowed_aaguids.is_empty() {
        return Err(DomainError::invalid(
            "direct attestation needs allowed_aaguids (the authenticator models accepted)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let mut ok = FidoSettings {
            rp_id: Some("example.com".into()),
            allowed_origins: vec!["https://login.example.com".into()],
            attestation: FidoAttestation::Direct,
            allowed_aaguids: vec!["01020304-0506-0708-0102-03040506070A".into()],
            ..FidoSettings::default()
        };
        check(&mut ok).unwrap();
        assert_eq!(
            ok.allowed_aaguids[0],
            "01020304-0506-0708-0102-03040506070a"
        );
        for bad in [
            FidoSettings {
                allowed_origins: vec!["http://evil.example".into()],
                ..FidoSettings::default()
            },
            FidoSettings {
                allowed_origins: vec!["https://a.example/path".into()],
                ..FidoSettings::default()
            },
            FidoSettings {
                rp_id: Some("example.com".into()),
                allowed_origins: vec!["https://notexample.com".into()],
                ..FidoSettings::default()
            },
            FidoSettings {
                attestation: FidoAttestation::Direct,
                ..FidoSettings::default()
            },
            FidoSettings {
                allowed_aaguids: vec!["nope".into()],
                ..FidoSettings::default()
            },
            FidoSettings {
                rp_id: Some("https://x".into()),
                ..FidoSettings::default()
            },
        ] {
            let mut bad = bad;
            assert!(check(&mut bad).is_err(), "{bad:?}");
        }
    }
}
