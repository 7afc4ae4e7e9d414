//! [`Error`]: every way loading or calling a module fails, and its
//! [`ErrorKind`] (the `kind` label of `cathedral_module_errors_total`).

use std::sync::Arc;
use std::time::Duration;

/// A module failed to load or to answer. No variant is ever a host panic:
/// whatever a guest does ends here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The guest trapped: a Rust panic or abort, `unreachable`, a stack
    /// overflow, an out-of-bounds access, a failing host call.
    #[error("module {module}: trap: {message}")]
    Trap {
        /// The module's name.
        module: Arc<str>,
        /// What happened, with the guest's last stderr line when there is
        /// one (a Rust panic message).
        message: String,
    },
    /// The guest used up its CPU deadline, or the call its wall timeout.
    #[error("module {module}: timeout: {}", timeout_reason(*.limit, *.wall))]
    Timeout {
        /// The module's name.
        module: Arc<str>,
        /// The limit that was hit.
        limit: Duration,
        /// Whether it was the wall-clock timeout rather than the CPU deadline.
        wall: bool,
    },
    /// The guest needed more memory than its limit (and did not cope with
    /// the failed allocation).
    #[error("module {module}: out of memory: limit {limit} bytes")]
    Oom {
        /// The module's name.
        module: Arc<str>,
        /// The memory limit, in bytes.
        limit: usize,
    },
    /// The module could not be loaded: not a component, does not compile,
    /// imports something the host does not provide, lacks an export, or
    /// asks for more than the engine's limits.
    #[error("module {module}: cannot load: {reason}")]
    Load {
        /// The module's name.
        module: Arc<str>,
        /// Why, naming the import or export at fault when there is one.
        reason: String,
    },
    /// The guest answered, but wrongly: an invalid header name or value, a
    /// status out of range, a bad path, a handler that never set its
    /// response, an explicit `exit`.
    #[error("module {module}: guest error: {message}")]
    GuestError {
        /// The module's name.
        module: Arc<str>,
        /// What was wrong.
        message: String,
    },
    /// No instance slot was free (the pooling allocator's `max_instances`
    /// concurrent instances are in use).
    #[error("module {module}: busy: {reason}")]
    Busy {
        /// The module's name.
        module: Arc<str>,
        /// The allocator's message.
        reason: String,
    },
    /// The engine could not be built from its [`crate::EngineConfig`].
    #[error("wasm engine: {reason}")]
    Engine {
        /// Why.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kind of an [`Error`]: what the node counts and its failure policy
/// acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::Trap`].
    Trap,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Oom`].
    Oom,
    /// See [`Error::Load`].
    Load,
    /// See [`Error::GuestError`].
    GuestError,
    /// See [`Error::Busy`].
    Busy,
    /// See [`Error::Engine`].
    Engine,
}

impl ErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Trap,
        ErrorKind::Timeout,
        ErrorKind::Oom,
        ErrorKind::Load,
        ErrorKind::GuestError,
        ErrorKind::Busy,
        ErrorKind::Engine,
    ];

    /// The metric label value: `trap`, `timeout`, `oom`, `load`,
    /// `guest_error`, `busy`, `engine`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Oom => "oom",
            ErrorKind::Load => "load",
            ErrorKind::GuestError => "guest_error",
            ErrorKind::Busy => "busy",
            ErrorKind::Engine => "engine",
        }
    }

    /// Position in [`ErrorKind::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            ErrorKind::Trap => 0,
            ErrorKind::Timeout => 1,
            ErrorKind::Oom => 2,
            ErrorKind::Load => 3,
            ErrorKind::GuestError => 4,
            ErrorKind::Busy => 5,
            ErrorKind::Engine => 6,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The kind, for metrics and the failure policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Trap { .. } => ErrorKind::Trap,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Oom { .. } => ErrorKind::Oom,
            Error::Load { .. } => ErrorKind::Load,
            Error::GuestError { .. } => ErrorKind::GuestError,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::Engine { .. } => ErrorKind::Engine,
        }
    }

    /// The module's name, when the error is about one.
    pub fn module(&self) -> Option<&str> {
        match self {
            Error::Trap { module, .. }
            | Error::Timeout { module, .. }
            | Error::Oom { module, .. }
            | Error::Load { module, .. }
            | Error::GuestError { module, .. }
            | Error::Busy { module, .. } => Some(module),
            Error::Engine { .. } => None,
        }
    }

    pub(crate) fn load(module: &Arc<str>, reason: impl Into<String>) -> Self {
        Error::Load {
            module: module.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn guest(module: &Arc<str>, message: impl Into<String>) -> Self {
        Error::GuestError {
            module: module.clone(),
            message: message.into(),
        }
    }
}

fn timeout_reason(limit: Duration, wall: bool) -> String {
    if wall {
        format!("call took longer than its wall-clock timeout of {limit:?}")
    } else {
        format!("used more than its CPU deadline of {limit:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_labels_and_indices() {
        let labels: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn messages_name_the_module() {
        let module: Arc<str> = Arc::from("personalize");
        let e = Error::Timeout {
            module: module.clone(),
            limit: Duration::from_millis(50),
            wall: false,
        };
        assert_eq!(
            e.to_string(),
            "module personalize: timeout: used more than its CPU deadline of 50ms"
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.module(), Some("personalize"));
        assert_eq!(Error::guest(&module, "bad").kind().as_str(), "guest_error");
    }
}
