//! Cathedral's configuration: TOML files in, validated types out.
//!
//! Two layers, as everywhere in Cathedral: [`raw`](crate::raw) holds serde
//! structs that mirror the TOML exactly (unknown fields rejected);
//! validation turns them into the types in [`types`](crate::types),
//! collecting *every* problem with the file and key path it came from. A
//! region overlay (`regions/<id>.toml`) is merged over the global edge config
//! before validation, remembering which file set which key.
//!
//! The configuration has two parts. The [`Bootstrap`] stays local to the node
//! (listeners, certificates, admin token, region, limits, cache and Wasm
//! engine sizing, and in bundle mode the origins and pinned root keys of
//! [`BundleSettings`]): [`load_bootstrap`].
//! The [`EdgeConfig`] is the activated part (routes, upstreams, rate-limit
//! policies, Wasm modules and the routes' filters and handlers, and what
//! later features add); in local mode it is read from
//! files ([`load_edge`]), in bundle mode from a signed bundle ([`parse_edge`]
//! on in-memory text).
//! [`load`] does both; [`default_bootstrap`] and [`quick_upstream`] serve
//! `cathedral serve` without files; [`render_effective`] prints the result.
//! The file formats are documented in `docs/configuration.md`.
//!
//! This crate reads only the files it is given (and checks that the files
//! and directories the config names exist); it knows nothing about HTTP
//! serving, sockets or async runtimes. No input makes it panic.

mod bootstrap;
mod edge;
mod error;
mod load;
mod merge;
mod modules;
mod raw;
mod render;
mod size;
mod types;
mod validate;

pub use bootstrap::Overrides;
pub use edge::Source;
pub use error::{ConfigError, ConfigErrors, Result};
pub use load::{
    default_bootstrap, load, load_bootstrap, load_edge, parse_edge, parse_edge_in, quick_upstream,
};
pub use modules::MemoryCap;
pub use render::render_effective;
pub use types::*;
pub use validate::{FileTree, LocalFiles};
