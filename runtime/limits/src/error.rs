//! The crate's one error type: everything a [`crate::Quota`] or a
//! [`crate::PolicySpec`] can get wrong. Checking a key never fails.

use std::time::Duration;

/// Why a quota or a policy was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The quota's period is zero.
    #[error("quota period must be longer than zero")]
    ZeroPeriod,

    /// `period / rate` rounds down to zero nanoseconds.
    #[error("quota of {rate} per {period:?} is finer than one request per nanosecond")]
    RateTooFine {
        /// Requests per period.
        rate: u32,
        /// The period.
        period: Duration,
    },

    /// An empty bucket would take longer than [`crate::MAX_WINDOW`] to refill.
    #[error("quota refills its burst of {burst} in {window:?}, longer than the maximum {max:?}")]
    WindowTooLong {
        /// The burst size.
        burst: u32,
        /// `period / rate × burst`, or `None` if that overflows.
        window: Option<Duration>,
        /// The longest window accepted.
        max: Duration,
    },

    /// The policy name cannot appear in a header.
    #[error("policy name {name:?} is invalid: {reason}")]
    InvalidPolicyName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `max_keys` is zero or above [`crate::MAX_KEYS`].
    #[error("policy {policy:?}: max_keys {max_keys} must be between 1 and {limit}")]
    MaxKeysOutOfRange {
        /// The policy name.
        policy: String,
        /// The value given.
        max_keys: usize,
        /// The largest value accepted.
        limit: usize,
    },

    /// A duration setting (`penalty`, `idle_timeout`) is out of range.
    #[error("policy {policy:?}: {setting} of {value:?} must be between {min:?} and {max:?}")]
    DurationOutOfRange {
        /// The policy name.
        policy: String,
        /// Which setting.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest value accepted.
        min: Duration,
        /// The longest value accepted.
        max: Duration,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
