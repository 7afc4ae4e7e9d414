//! The crate's error type. Every refusal of a document is a variant here, so
//! the edge can count, log and audit it by [`Error::reason`].

use std::path::PathBuf;

use crate::envelope::DocKind;
use crate::keys::KeyId;
use crate::time::Timestamp;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{doc}: malformed: {reason}")]
    Malformed { doc: DocKind, reason: String },
    #[error("{doc}: {size} bytes, more than the limit of {limit}")]
    Oversize { doc: String, size: u64, limit: u64 },
    #[error("{doc}: signature by {key} does not verify")]
    BadSignature { doc: DocKind, key: KeyId },
    #[error("{doc}: signed by {key}, which is not a trusted key")]
    UnknownKey { doc: DocKind, key: KeyId },
    #[error("{doc}: signed by {key}, which expired at {expired}")]
    ExpiredKey {
        doc: DocKind,
        key: KeyId,
        expired: Timestamp,
    },
    #[error("{doc}: {valid} valid signature(s) from distinct trusted keys, {needed} needed")]
    Threshold {
        doc: DocKind,
        needed: usize,
        valid: usize,
    },
    #[error("{doc}: version {version} is not above {highest}, the highest seen{scope}")]
    Rollback {
        doc: DocKind,
        /// ` for <env>/<region>` or empty.
        scope: String,
        version: u64,
        highest: u64,
    },
    #[error("{doc}: expired at {expired} (now {now})")]
    Expired {
        doc: DocKind,
        expired: Timestamp,
        now: Timestamp,
    },
    #[error("{doc}: for {got}, this node is {expected}")]
    WrongScope {
        doc: DocKind,
        expected: String,
        got: String,
    },
    #[error("{what}: blake3 {actual}, expected {expected}")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {actual} bytes, expected {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("requires runtime {required} or newer, this is {running}")]
    RuntimeTooOld { required: String, running: String },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl Error {
    /// A short stable label: the `reason` of refusal metrics and audit
    /// entries.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Malformed { .. } => "malformed",
            Error::Oversize { .. } => "oversize",
            Error::BadSignature { .. } => "bad-signature",
            Error::UnknownKey { .. } => "unknown-key",
            Error::ExpiredKey { .. } => "expired-key",
            Error::Threshold { .. } => "threshold",
            Error::Rollback { .. } => "rollback",
            Error::Expired { .. } => "expired",
            Error::WrongScope { .. } => "wrong-scope",
            Error::HashMismatch { .. } => "hash-mismatch",
            Error::SizeMismatch { .. } => "size-mismatch",
            Error::InvalidPath { .. } => "invalid-path",
            Error::RuntimeTooOld { .. } => "runtime-too-old",
            Error::KeyFile { .. } => "key-file",
            Error::Io { .. } => "io",
            Error::State { .. } => "state",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
