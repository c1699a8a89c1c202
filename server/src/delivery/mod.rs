//! Sending what the domain decided to send: pushes to devices (FCM, APNs, the application's
//! webhook), passcodes to people (email over SMTP, SMS and voice through the application's
//! provider webhook) and CIBA notifications to relying parties,
//! signed event webhooks to customers. Implements the traits of
//! `domain::ports`.

pub(crate) mod ciba;
pub(crate) mod messages;
pub(crate) mod push;
pub(crate) mod webhooks;
