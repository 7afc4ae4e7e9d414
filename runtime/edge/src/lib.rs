//! The Cathedral edge node: listeners, routing, proxying, static content and
//! the admin API.
//!
//! A node is started with [`Node::start`] from a validated
//! [`cathedral_config::Bootstrap`] (what stays local: listeners, certificates,
//! limits, admin token) and an [`cathedral_config::EdgeConfig`] (what gets
//! activated: routes and upstreams). The activated part lives in one
//! immutable `Active` snapshot behind an `ArcSwap`; a reload builds
//! a new snapshot off to the side and swaps it in atomically, so every request
//! finishes on the snapshot it started with.
//!
//! The crate knows nothing about command lines, signals or where config files
//! live: the binary hands it a [`ConfigSource`] to reload from.

mod active;
mod admin;
mod body;
pub mod bundles;
mod cached;
mod client_addr;
mod conditional;
mod conn;
pub mod content;
mod error;
mod files;
mod filters;
mod geoip;
mod metrics;
mod node;
pub mod origin;
mod proxy;
mod proxy_protocol;
mod ratelimit;
mod responses;
mod router;
mod service;
mod static_files;
mod tls;
mod upstream;

pub use body::{Body, BoxError};
pub use error::{Error, Result};
pub use files::{Files, Loaded, LocalFiles};
pub use node::{ConfigSource, Node, NodeHandle, ReloadOutcome};
