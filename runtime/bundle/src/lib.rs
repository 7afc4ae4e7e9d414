//! Signed bundles: what an edge in bundle mode trusts, and why.
//!
//! A bundle is a signed [`Manifest`] plus the content-addressed files it
//! lists. This crate owns the documents (root, keyset, manifest, head) in
//! their DSSE envelopes, ed25519 keys and threshold verification, bundle
//! path rules, the persisted trust state with its version high-water marks,
//! the edge's content-addressed store, and the hash-chained audit log.
//!
//! It knows nothing about HTTP, async runtimes or Wasm: the edge fetches
//! bytes and hands them here; this crate says whether they may be used.
//! The design and threat model are in `docs/bundles.md`.
//!
//! For the release tooling, [`Draft`] builds an unsigned bundle directory
//! and [`OriginDir`] writes the origin layout, every file atomically.

mod audit;
mod documents;
mod draft;
mod envelope;
mod error;
mod json;
mod keys;
mod origin_dir;
mod path;
mod store;
mod time;
mod trust;

// Helper-owned modules (audit, json, path):
pub use audit::{AuditEntry, AuditLog, AuditProblem, verify_audit_log};
pub use json::from_slice_strict;
pub use path::{PathLimits, validate_path, validate_paths};
// Core:
pub use documents::{
    ConfigRef, FileEntry, Head, Keyset, KeysetKey, MANIFEST_FORMAT, Manifest, Root, Scope, Totals,
    check_scope_name, parse_version,
};
pub use draft::{Draft, MANIFEST_FILE, SIGNED_MANIFEST_FILE, manifest_payload};
pub use envelope::{DocKind, Envelope, KeyStatus, Signature};
pub use error::{Error, Result};
pub use keys::{KeyId, PublicKey, SecretKey};
pub use origin_dir::OriginDir;
pub use store::{BlobWriter, Current, Installed, Store};
pub use time::Timestamp;
pub use trust::{MAX_SMALL_DOC, ManifestLimits, Trust, TrustState, VerifiedManifest};
