//! lank8s, a pull-through mirror for container registries.
//!
//! - `cli`: the command line; `config`: typed configuration and defaults.
//! - `http`: the server, access log and the /v2 pull API.
//! - `routing`: which upstream and repository a request is for.
//! - `dispatch`: how a blob leaves (stream, or redirect by client network).
//! - `hosts`: client configuration generated for a mirror address.
//! - `mirror`: the core assembled from configuration.
//! - `access`: accounts, tokens, IP grants, fair-use limits, allow/deny.
//! - `cache`: manifests, blobs, the on-disk store and the single-flight fill.
//! - `upstream`: the client for upstream registries (tokens, redirects, retries).
//! - `oci`: names, digests, media types and error JSON.
//! - `workers`: dedicated threads for memory-hungry blocking work.
//! - `state`: accounts, grants, keys and locks, and counters (local file or Redis).

#![forbid(unsafe_code)]

pub mod access;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod hosts;
pub mod http;
pub mod mirror;
pub mod oci;
pub mod routing;
pub mod state;
pub mod upstream;
pub mod workers;
