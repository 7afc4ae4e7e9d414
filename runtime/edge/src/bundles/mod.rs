//! Bundle mode: the node's edge config, static content and modules come
//! from signed bundles synced from an origin (design: docs/bundles.md).
//! `cathedral_bundle` judges documents; this module fetches them, stages
//! files, and activates through the same path as a reload.

mod fetch;
mod manager;
mod tree;

pub use manager::{BundleManager, RUNTIME_VERSION, SyncOutcome};
pub use tree::BundleTree;
