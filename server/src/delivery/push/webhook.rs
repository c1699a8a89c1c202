//! The webhook provider: the application's own URL receives every push for its devices, as
//! JSON, and relays `data` to the app by its own channel.

use serde_json::{Value, json};

use super::{PushError, device_data, network};
use crate::store::authentications::Authentication;
use crate::store::enrollments::Enrollment;

/// What the webhook receives for one authentication.
pub(super) fn body(record: &Authentication, device: &Enrollment, max_bytes: usize) -> Value {
    json!({
        "application_id": record.application_id,
        "user_id": record.user_id,
        "enrollment_id": record.enrollment_id,
        "device_id": device.device_id,
        "push": device.push,
        "kind": record.kind,
        "data": device_data(record, max_bytes),
    })
}

/// One POST to the webhook: 2xx sent, 404/410 the device can no longer be reached, 429/5xx
/// transient, other answers final.
pub(super) async fn send(
    clients: &super::PushClients,
    url: &str,
    body: &Value,
) -> Result<(), PushError> {
    let client = clients.webhook()?;
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| network(&e))?;
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(()),
        404 | 410 => Err(PushError::TokenInvalid),
        429 | 500..=599 => Err(PushError::Transient(format!("HTTP {status}"))),
        _ => Err(PushError::Permanent(format!("HTTP {status}"))),
    }
}
