//! The application each CIBA client authenticating with a secret was last found for, with the
//! digest of the secret it had then: a hint, never an authority. A backchannel request whose
//! client presents that secret and names its user by a plain `login_hint` reads the user
//! beside the client's own read (`backchannel::authenticate`): on PostgreSQL one round trip
//! where there were two. The client's read still decides: the early reads are used only when
//! it authenticates the client and finds it under the hinted application, and dropped unseen
//! otherwise. Only clients that authenticated are kept, and a secret that does not match the
//! kept digest reads nothing early, so a flood of unknown clients or wrong secrets costs the
//! database no more than it did.

use std::collections::HashMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;
use tessera_protocol::ids::ApplicationId;

use crate::store::applications;
use crate::store::ciba::CibaClient;

/// The most clients remembered; when reached, the hints are emptied (and refilled by the
/// clients in use as they authenticate again).
pub const CAPACITY: usize = 4096;

/// What is kept of a client that authenticated with a secret.
#[derive(Debug, Clone)]
struct Kept {
    application: ApplicationId,
    secret_digest: String,
}

/// The application of each CIBA client that authenticated with a secret (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct ClientHints {
    kept: Mutex<HashMap<String, Kept>>,
}

impl ClientHints {
    /// The application `client_id` was last found for, if `secret` is the secret it had then.
    pub fn application_for(&self, client_id: &str, secret: &str) -> Option<ApplicationId> {
        let kept = self.kept.lock().ok()?.get(client_id).cloned()?;
        let presented = applications::api_key_digest(secret);
        bool::from(presented.as_bytes().ct_eq(kept.secret_digest.as_bytes()))
            .then_some(kept.application)
    }

    /// Remembers `client`, which just authenticated (a client without a secret is not kept).
    pub fn remember(&self, client: &CibaClient) {
        let Some(secret_digest) = client.secret_digest.clone() else {
            return;
        };
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.len() >= CAPACITY && !kept.contains_key(&client.client_id) {
            kept.clear();
        }
        kept.insert(
            client.client_id.clone(),
            Kept {
                application: client.application_id.clone(),
                secret_digest,
            },
        );
    }

    /// How many clients are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.lock().map(|k| k.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use tessera_protocol::ciba::{ClientAuthMethod, DeliveryMode};

    use super::*;

    fn client(id: &str, secret: Option<&str>) -> CibaClient {
        CibaClient {
            client_id: id.into(),
            application_id: ApplicationId::generate(),
            name: "RP".into(),
            delivery_mode: DeliveryMode::Poll,
            notification_endpoint: None,
            auth_method: ClientAuthMethod::ClientSecretBasic,
            secret_digest: secret.map(applications::api_key_digest),
            jwks: None,
            request_signing_alg: None,
            user_code_required: false,
            created_at: 0,
            redirect_uris: Vec::new(),
            grant_types: Vec::new(),
        }
    }

    #[test]
    fn a_hint_is_given_only_for_the_secret_the_client_authenticated_with() {
        let hints = ClientHints::default();
        let a = client("cli_a", Some("right"));
        assert_eq!(hints.application_for("cli_a", "right"), None);
        hints.remember(&a);
        assert_eq!(
            hints.application_for("cli_a", "right"),
            Some(a.application_id.clone())
        );
        assert_eq!(hints.application_for("cli_a", "wrong"), None);
        assert_eq!(hints.application_for("cli_b", "right"), None);
        // A rotated secret: the new one is hinted once the client authenticated with it.
        let rotated = CibaClient {
            secret_digest: Some(applications::api_key_digest("new")),
            ..a.clone()
        };
        hints.remember(&rotated);
        assert_eq!(hints.application_for("cli_a", "right"), None);
        assert_eq!(
            hints.application_for("cli_a", "new"),
            Some(a.application_id)
        );
        // A client without a secret (private_key_jwt) is not kept.
        hints.remember(&client("cli_jwt", None));
        assert_eq!(hints.len(), 1);
        for n in 0..CAPACITY + 10 {
            hints.remember(&client(&format!("cli_{n}"), Some("s")));
            assert!(hints.len() <= CAPACITY);
        }
    }
}
