//! Shared pieces of the Tessera examples.
//!
//! [`customer::CustomerApi`] is what a customer's backend (or a PingFederate-style adapter) does
//! against the Tessera server's customer API: create users, start pairings, relay a mobile
//! payload, list and remove devices. The walkthrough and the end-to-end tests use it; it is also a
//! compact reference for writing such a client in another language.

#![warn(missing_docs)]

pub mod customer;
