//! Shared pieces of the Tessera examples.
//!
//! [`customer::CustomerApi`] is what a customer's backend (or a PingFederate-style adapter) does
//! against the Tessera server's customer API: create users, start pairings, relay a mobile
//! payload, list and remove devices. The walkthrough and the end-to-end tests use it; it is also a
//! compact reference for writing such a client in another language.
//!
//! [`relying_party::RelyingParty`] is a CIBA relying party (a call centre, a bank's back office)
//! talking to the server's OpenID endpoints; [`notification_receiver::NotificationReceiver`] is
//! the notification endpoint a ping- or push-mode relying party runs.

#![warn(missing_docs)]

pub mod customer;
pub mod notification_receiver;
pub mod relying_party;
