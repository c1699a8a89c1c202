//! A client for the customer API, as a customer's backend would call it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_protocol::api::{
    AuthenticationMethod, AuthenticationStatus, BackupChannel, BackupContacts,
    CreateAuthenticationRequest, CreateOtpChallenge, CreateQrSession, CreateUserRequest,
    DeviceList, OtpChallenge, OtpChallengeVerified, OtpToken, OtpTokenList, OtpVerified,
    QrSessionCreated, QrSessionStatus, RegisterOtpToken, RelayPairingRequest, RelayPairingResponse,
    SendBackupCode, StartPairingRequest, StartPairingResponse, User, VerifyOtpRequest,
};
use tessera_protocol::authentication::AuthenticationId;
use tessera_protocol::ciba::{
    CibaClientList, CibaClientRegistered, RegisterCibaClient, SetUserCode,
};
use tessera_protocol::error::{ErrorBody, ErrorCode};
use tessera_protocol::flows::{
    CreateFlowRequest, FlowAction, FlowActionName, FlowHistory, FlowState,
};
use tessera_protocol::ids::{EnrollmentId, UserId};
use tessera_protocol::qr::QrSessionId;

/// A failed customer API call.
#[derive(Debug, thiserror::Error)]
pub enum CustomerApiError {
    /// The server answered with a Tessera error.
    #[error("server refused ({status}): {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: ErrorCode,
        /// Message safe to show.
        message: String,
        /// `mandatory_methods_missing`: what the user must register first.
        missing_methods: Vec<AuthenticationMethod>,
        /// `action_not_allowed`: the flow actions allowed now.
        allowed_actions: Vec<FlowActionName>,
    },
    /// The call did not complete or the answer was not understood.
    #[error("transport: {0}")]
    Transport(String),
}

impl CustomerApiError {
    /// The stable error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CustomerApiError::Api { code, .. } => Some(*code),
            CustomerApiError::Transport(_) => None,
        }
    }

    /// The methods a `mandatory_methods_missing` error lists.
    pub fn missing_methods(&self) -> &[AuthenticationMethod] {
        match self {
            CustomerApiError::Api {
                missing_methods, ..
            } => missing_methods,
            CustomerApiError::Transport(_) => &[],
        }
    }

    /// The flow actions an `action_not_allowed` error lists.
    pub fn allowed_actions(&self) -> &[FlowActionName] {
        match self {
            CustomerApiError::Api {
                allowed_actions, ..
            } => allowed_actions,
            CustomerApiError::Transport(_) => &[],
        }
    }
}

/// The customer API of one application, authenticated with its API key.
#[derive(Clone)]
pub struct CustomerApi {
    base: String,
    api_key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for CustomerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomerApi({}, api key <redacted>)", self.base)
    }
}

impl CustomerApi {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, api_key: &str) -> Self {
        // reqwest is built without a default TLS provider; use ring (a second install is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST /v1/users`.
    pub async fn create_user(
        &self,
        user_id: &str,
        display_name: Option<&str>,
    ) -> Result<User, CustomerApiError> {
        let user_id: UserId = user_id
            .parse()
            .map_err(|_| CustomerApiError::Transport("invalid user id".into()))?;
        let body = CreateUserRequest {
            user_id,
            display_name: display_name.map(str::to_string),
            locale: None,
        };
        self.send(reqwest::Method::POST, "/v1/users", Some(&body))
            .await
    }

    /// `POST /v1/users` with every field of `body` (e.g. a preferred `locale`).
    pub async fn create_user_with(
        &self,
        body: &CreateUserRequest,
    ) -> Result<User, CustomerApiError> {
        self.send(reqwest::Method::POST, "/v1/users", Some(body))
            .await
    }

    /// `PATCH /v1/users/{user_id}`: the user's preferred `locale` (`None` removes it).
    pub async fn update_user(
        &self,
        user_id: &str,
        body: &tessera_protocol::api::UpdateUserRequest,
    ) -> Result<User, CustomerApiError> {
        self.send(reqwest::Method::PATCH, &user_path(user_id, ""), Some(body))
            .await
    }

    /// `GET /v1/users/{user_id}`.
    pub async fn get_user(&self, user_id: &str) -> Result<User, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, &user_path(user_id, ""), None)
            .await
    }

    /// `POST /v1/users/{user_id}/pairings`: a code and URI for the user's device.
    pub async fn start_pairing(
        &self,
        user_id: &str,
        ttl_seconds: Option<u32>,
    ) -> Result<StartPairingResponse, CustomerApiError> {
        let body = StartPairingRequest { ttl_seconds };
        self.send(
            reqwest::Method::POST,
            &user_path(user_id, "/pairings"),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/users/{user_id}/relay-pairings`: forwards the app's mobile payload.
    pub async fn relay_pairing(
        &self,
        user_id: &str,
        mobile_payload: &str,
    ) -> Result<RelayPairingResponse, CustomerApiError> {
        let body = RelayPairingRequest {
            mobile_payload: mobile_payload.to_string(),
        };
        self.send(
            reqwest::Method::POST,
            &user_path(user_id, "/relay-pairings"),
            Some(&body),
        )
        .await
    }

    /// `GET /v1/users/{user_id}/devices`.
    pub async fn list_devices(&self, user_id: &str) -> Result<DeviceList, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, &user_path(user_id, "/devices"), None)
            .await
    }

    /// `POST /v1/users/{user_id}/authentications`: asks the user's device.
    pub async fn create_authentication(
        &self,
        user_id: &str,
        request: &CreateAuthenticationRequest,
    ) -> Result<AuthenticationStatus, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            &user_path(user_id, "/authentications"),
            Some(request),
        )
        .await
    }

    /// `GET /v1/authentications/{id}?wait=N`: the state, waiting up to `wait_seconds` for the
    /// device's answer.
    pub async fn authentication(
        &self,
        id: &AuthenticationId,
        wait_seconds: u64,
    ) -> Result<AuthenticationStatus, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/authentications/{id}?wait={wait_seconds}"),
            None,
        )
        .await
    }

    /// `PUT /v1/users/{user_id}/devices/{enrollment_id}/primary`: makes that device the
    /// primary one; returns the user's devices after the change.
    pub async fn set_primary(
        &self,
        user_id: &str,
        enrollment_id: &EnrollmentId,
    ) -> Result<DeviceList, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::PUT,
            &user_path(user_id, &format!("/devices/{enrollment_id}/primary")),
            None,
        )
        .await
    }

    /// `DELETE /v1/users/{user_id}`: removes the user, their devices and their tokens.
    pub async fn remove_user(&self, user_id: &str) -> Result<(), CustomerApiError> {
        let path = user_path(user_id, "");
        self.send_empty::<()>(reqwest::Method::DELETE, &path, None)
            .await
    }

    /// `DELETE /v1/users/{user_id}/devices/{enrollment_id}`.
    pub async fn remove_device(
        &self,
        user_id: &str,
        enrollment_id: &EnrollmentId,
    ) -> Result<(), CustomerApiError> {
        let path = user_path(user_id, &format!("/devices/{enrollment_id}"));
        self.send_empty::<()>(reqwest::Method::DELETE, &path, None)
            .await
    }

    /// `POST /v1/users/{user_id}/otp/verify`: checks a one-time passcode from the user's device.
    pub async fn verify_otp(
        &self,
        user_id: &str,
        code: &str,
    ) -> Result<OtpVerified, CustomerApiError> {
        let body = VerifyOtpRequest {
            code: code.to_string(),
        };
        self.send(
            reqwest::Method::POST,
            &user_path(user_id, "/otp/verify"),
            Some(&body),
        )
        .await
    }

    /// `DELETE /v1/users/{user_id}/otp/failures`: unlocks passcode sign-in for the user.
    pub async fn reset_otp_failures(&self, user_id: &str) -> Result<(), CustomerApiError> {
        self.send_empty::<()>(
            reqwest::Method::DELETE,
            &user_path(user_id, "/otp/failures"),
            None,
        )
        .await
    }

    /// `POST /v1/authentications/{id}/otp`: answers a push authentication with a passcode (the
    /// app's, under use-code or OTP fallback, or a backup code sent for it).
    pub async fn answer_with_otp(
        &self,
        id: &AuthenticationId,
        code: &str,
    ) -> Result<AuthenticationStatus, CustomerApiError> {
        let body = VerifyOtpRequest {
            code: code.to_string(),
        };
        self.send(
            reqwest::Method::POST,
            &format!("/v1/authentications/{id}/otp"),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/authentications/{id}/backup-codes`: sends a passcode for the authentication
    /// through a backup channel.
    pub async fn send_backup_code(
        &self,
        id: &AuthenticationId,
        channel: BackupChannel,
    ) -> Result<OtpChallenge, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/authentications/{id}/backup-codes"),
            Some(&SendBackupCode { channel }),
        )
        .await
    }

    /// `PUT /v1/users/{user_id}/backup-contacts`: registers the user's phone and email; answers
    /// them masked.
    pub async fn set_backup_contacts(
        &self,
        user_id: &str,
        contacts: &BackupContacts,
    ) -> Result<BackupContacts, CustomerApiError> {
        self.send(
            reqwest::Method::PUT,
            &user_path(user_id, "/backup-contacts"),
            Some(contacts),
        )
        .await
    }

    /// `GET /v1/users/{user_id}/backup-contacts`: the user's contacts, masked.
    pub async fn backup_contacts(&self, user_id: &str) -> Result<BackupContacts, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            &user_path(user_id, "/backup-contacts"),
            None,
        )
        .await
    }

    /// `POST /v1/users/{user_id}/otp-challenges`: a passcode to the user's registered contact,
    /// or to the phone or email given (one-time device).
    pub async fn create_otp_challenge(
        &self,
        user_id: &str,
        request: &CreateOtpChallenge,
    ) -> Result<OtpChallenge, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            &user_path(user_id, "/otp-challenges"),
            Some(request),
        )
        .await
    }

    /// `POST /v1/otp-challenges/{id}/verify`.
    pub async fn verify_otp_challenge(
        &self,
        challenge_id: &str,
        code: &str,
    ) -> Result<OtpChallengeVerified, CustomerApiError> {
        let body = VerifyOtpRequest {
            code: code.to_string(),
        };
        let id: String = challenge_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        self.send(
            reqwest::Method::POST,
            &format!("/v1/otp-challenges/{id}/verify"),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/users/{user_id}/otp-tokens`: registers an OATH token.
    pub async fn register_otp_token(
        &self,
        user_id: &str,
        request: &RegisterOtpToken,
    ) -> Result<OtpToken, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            &user_path(user_id, "/otp-tokens"),
            Some(request),
        )
        .await
    }

    /// `GET /v1/users/{user_id}/otp-tokens`.
    pub async fn otp_tokens(&self, user_id: &str) -> Result<OtpTokenList, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            &user_path(user_id, "/otp-tokens"),
            None,
        )
        .await
    }

    /// `POST /v1/qr-sessions`: a QR login session for a web page.
    pub async fn create_qr_session(
        &self,
        body: &CreateQrSession,
    ) -> Result<QrSessionCreated, CustomerApiError> {
        self.send(reqwest::Method::POST, "/v1/qr-sessions", Some(body))
            .await
    }

    /// `GET /v1/qr-sessions/{id}?wait=N`: the session's state, waiting up to `wait` seconds for a
    /// change.
    pub async fn qr_session(
        &self,
        id: &QrSessionId,
        wait: u64,
    ) -> Result<QrSessionStatus, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/qr-sessions/{id}?wait={wait}"),
            None,
        )
        .await
    }

    /// `GET /v1/qr-sessions/{id}/qr.png` or `qr.svg`: the current code as an image (`format` is
    /// `png` or `svg`).
    pub async fn qr_image(
        &self,
        id: &QrSessionId,
        format: &str,
    ) -> Result<Vec<u8>, CustomerApiError> {
        let path = format!("/v1/qr-sessions/{id}/qr.{format}");
        Ok(self
            .execute::<()>(reqwest::Method::GET, &path, None)
            .await?
            .bytes()
            .await
            .map_err(|e| CustomerApiError::Transport(e.to_string()))?
            .to_vec())
    }

    /// `POST /v1/ciba/clients`: registers a CIBA relying party for this application.
    pub async fn register_ciba_client(
        &self,
        registration: &RegisterCibaClient,
    ) -> Result<CibaClientRegistered, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            "/v1/ciba/clients",
            Some(registration),
        )
        .await
    }

    /// `GET /v1/ciba/clients`.
    pub async fn ciba_clients(&self) -> Result<CibaClientList, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, "/v1/ciba/clients", None)
            .await
    }

    /// `DELETE /v1/ciba/clients/{client_id}`.
    pub async fn remove_ciba_client(&self, client_id: &str) -> Result<(), CustomerApiError> {
        self.send_empty::<()>(
            reqwest::Method::DELETE,
            &format!("/v1/ciba/clients/{client_id}"),
            None,
        )
        .await
    }

    /// `PUT /v1/users/{user_id}/ciba-user-code`: the secret the user gives relying parties.
    pub async fn set_ciba_user_code(
        &self,
        user_id: &str,
        user_code: &str,
    ) -> Result<(), CustomerApiError> {
        let body = SetUserCode {
            user_code: user_code.to_string(),
        };
        self.send_empty(
            reqwest::Method::PUT,
            &user_path(user_id, "/ciba-user-code"),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/flows`: starts an authentication flow.
    pub async fn create_flow(
        &self,
        body: &CreateFlowRequest,
    ) -> Result<FlowState, CustomerApiError> {
        self.send(reqwest::Method::POST, "/v1/flows", Some(body))
            .await
    }

    /// `GET /v1/flows/{id}`.
    pub async fn flow(&self, flow_id: &str) -> Result<FlowState, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, &format!("/v1/flows/{flow_id}"), None)
            .await
    }

    /// `POST /v1/flows/{id}`: applies one action.
    pub async fn flow_action(
        &self,
        flow_id: &str,
        action: &FlowAction,
    ) -> Result<FlowState, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/flows/{flow_id}"),
            Some(action),
        )
        .await
    }

    /// `GET /v1/flows/{id}/events`.
    pub async fn flow_events(&self, flow_id: &str) -> Result<FlowHistory, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/flows/{flow_id}/events"),
            None,
        )
        .await
    }

    /// `GET /v1/application/authentication-settings`: number matching and push-bombing limits.
    pub async fn authentication_settings(
        &self,
    ) -> Result<tessera_protocol::api::AuthenticationSettingsView, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            "/v1/application/authentication-settings",
            None,
        )
        .await
    }

    /// `PUT /v1/application/authentication-settings`.
    pub async fn set_authentication_settings(
        &self,
        settings: &tessera_protocol::api::AuthenticationSettings,
    ) -> Result<tessera_protocol::api::AuthenticationSettingsView, CustomerApiError> {
        self.send(
            reqwest::Method::PUT,
            "/v1/application/authentication-settings",
            Some(settings),
        )
        .await
    }

    /// `PUT /v1/policies`: saves a new version of the application's policy.
    pub async fn set_policy(
        &self,
        policy: &tessera_protocol::policy::PolicyDocument,
    ) -> Result<tessera_protocol::policy::PolicyVersion, CustomerApiError> {
        self.send(reqwest::Method::PUT, "/v1/policies", Some(policy))
            .await
    }

    /// `GET /v1/policies`: the current policy.
    pub async fn policy(
        &self,
    ) -> Result<tessera_protocol::policy::PolicyVersion, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, "/v1/policies", None)
            .await
    }

    /// `GET /v1/policies/versions`: every version.
    pub async fn policy_versions(
        &self,
    ) -> Result<tessera_protocol::policy::PolicyVersionList, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, "/v1/policies/versions", None)
            .await
    }

    /// `POST /v1/policies/evaluate`: a dry run.
    pub async fn evaluate_policy(
        &self,
        request: &tessera_protocol::policy::EvaluatePolicyRequest,
    ) -> Result<tessera_protocol::policy::PolicyEvaluation, CustomerApiError> {
        self.send(
            reqwest::Method::POST,
            "/v1/policies/evaluate",
            Some(request),
        )
        .await
    }

    /// `GET /v1/application/attestation-settings`: the attestation mode and registered apps.
    pub async fn attestation_settings(
        &self,
    ) -> Result<tessera_protocol::api::AttestationSettings, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            "/v1/application/attestation-settings",
            None,
        )
        .await
    }

    /// `PUT /v1/users/{user_id}/groups`.
    pub async fn set_user_groups(
        &self,
        user_id: &str,
        groups: &[&str],
    ) -> Result<tessera_protocol::policy::UserGroups, CustomerApiError> {
        let body = tessera_protocol::policy::UserGroups {
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        self.send(
            reqwest::Method::PUT,
            &user_path(user_id, "/groups"),
            Some(&body),
        )
        .await
    }

    /// `PUT /v1/application/attestation-settings`.
    pub async fn set_attestation_settings(
        &self,
        settings: &tessera_protocol::api::AttestationSettings,
    ) -> Result<tessera_protocol::api::AttestationSettings, CustomerApiError> {
        self.send(
            reqwest::Method::PUT,
            "/v1/application/attestation-settings",
            Some(settings),
        )
        .await
    }

    /// `PUT /v1/users/{user_id}/bypass`: the user's authentications complete without a device
    /// until it ends.
    pub async fn set_bypass(
        &self,
        user_id: &str,
        body: &tessera_protocol::bypass::SetBypassRequest,
    ) -> Result<tessera_protocol::bypass::BypassStatus, CustomerApiError> {
        self.send(
            reqwest::Method::PUT,
            &user_path(user_id, "/bypass"),
            Some(body),
        )
        .await
    }

    /// `GET /v1/users/{user_id}/bypass`.
    pub async fn bypass(
        &self,
        user_id: &str,
    ) -> Result<tessera_protocol::bypass::BypassStatus, CustomerApiError> {
        self.send::<(), _>(reqwest::Method::GET, &user_path(user_id, "/bypass"), None)
            .await
    }

    /// `DELETE /v1/users/{user_id}/bypass`.
    pub async fn clear_bypass(
        &self,
        user_id: &str,
    ) -> Result<tessera_protocol::bypass::BypassStatus, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::DELETE,
            &user_path(user_id, "/bypass"),
            None,
        )
        .await
    }

    /// `POST /v1/users/{user_id}/recovery-codes`: ten new codes, shown once.
    pub async fn issue_recovery_codes(
        &self,
        user_id: &str,
    ) -> Result<tessera_protocol::bypass::RecoveryCodesIssued, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::POST,
            &user_path(user_id, "/recovery-codes"),
            None,
        )
        .await
    }

    /// `GET /v1/users/{user_id}/recovery-codes`: how many remain.
    pub async fn recovery_codes(
        &self,
        user_id: &str,
    ) -> Result<tessera_protocol::bypass::RecoveryCodesStatus, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::GET,
            &user_path(user_id, "/recovery-codes"),
            None,
        )
        .await
    }

    /// `DELETE /v1/users/{user_id}/recovery-codes`.
    pub async fn revoke_recovery_codes(
        &self,
        user_id: &str,
    ) -> Result<tessera_protocol::bypass::RecoveryCodesStatus, CustomerApiError> {
        self.send::<(), _>(
            reqwest::Method::DELETE,
            &user_path(user_id, "/recovery-codes"),
            None,
        )
        .await
    }

    /// `POST /v1/authentications/{id}/recovery-code`: completes a pending authentication with
    /// one of its user's recovery codes.
    pub async fn answer_with_recovery_code(
        &self,
        id: &AuthenticationId,
        code: &str,
    ) -> Result<AuthenticationStatus, CustomerApiError> {
        let body = tessera_protocol::bypass::UseRecoveryCode {
            code: code.to_string(),
        };
        self.send(
            reqwest::Method::POST,
            &format!("/v1/authentications/{id}/recovery-code"),
            Some(&body),
        )
        .await
    }

    async fn send_empty<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), CustomerApiError> {
        self.execute(method, path, body).await.map(|_| ())
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CustomerApiError> {
        self.execute(method, path, body)
            .await?
            .json::<T>()
            .await
            .map_err(|e| CustomerApiError::Transport(e.to_string()))
    }

    /// One authenticated call: the response when it succeeded, the server's error otherwise.
    async fn execute<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, CustomerApiError> {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.api_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CustomerApiError::Transport(e.to_string()))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_from(response).await)
        }
    }
}

fn user_path(user_id: &str, rest: &str) -> String {
    // Percent-encode everything but RFC 3986 unreserved characters and '@'.
    let encoded: String = user_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/v1/users/{encoded}{rest}")
}

async fn error_from(response: reqwest::Response) -> CustomerApiError {
    let status = response.status().as_u16();
    match response.json::<ErrorBody>().await {
        Ok(body) => CustomerApiError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            missing_methods: body.error.missing_methods,
            allowed_actions: body.error.allowed_actions,
        },
        Err(_) => CustomerApiError::Transport(format!("HTTP {status} without an error body")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_ids_are_percent_encoded_in_paths() {
        assert_eq!(
            super::user_path("alice@example.com", "/devices"),
            "/v1/users/alice@example.com/devices"
        );
        assert_eq!(super::user_path("a/b c", ""), "/v1/users/a%2Fb%20c");
    }
}
