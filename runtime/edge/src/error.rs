//! The edge crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop a node from starting or a snapshot from being
/// activated. Request-time failures never reach this type: they become HTTP
/// responses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("upstream {upstream}: {reason}")]
    Upstream { upstream: String, reason: String },
    #[error("route {route}: static root {path}: {source}")]
    StaticRoot {
        route: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("module {module}: {reason}")]
    Module { module: String, reason: String },
    /// The Wasm host refused a module; its message names the module.
    #[error("{0}")]
    ModuleLoad(String),
    #[error("WebAssembly engine: {0}")]
    Wasm(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
