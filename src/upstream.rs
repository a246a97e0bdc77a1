//! Talking to upstream registries: the Docker token flow, credentials kept
//! to their own hosts, redirects, timeouts and retries.

pub mod auth;
pub mod client;

pub use client::Upstream;
