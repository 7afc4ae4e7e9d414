//! `cathedral:edge/rate-limit`: checks against the node's limiters
//! (`cathedral-limits`), restricted to the policies granted to the module
//! ([`RateLimits`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cathedral_limits::clock::Clock;
use cathedral_limits::{Decision, Limiter};

use crate::host::bindings::cathedral::edge::rate_limit;
use crate::state::StoreState;

/// A rate-limit policy a module may check against: a [`Limiter`] on any
/// clock (the node's use the default clock; tests inject a fake one).
pub trait RateLimitPolicy: Send + Sync + fmt::Debug {
    /// Checks `cost` units for `key`, as [`Limiter::check`].
    fn check(&self, key: &str, cost: u32) -> Decision;
}

impl<C> RateLimitPolicy for Limiter<C>
where
    C: Clock + Send + Sync + fmt::Debug,
    C::Instant: Send + Sync,
{
    fn check(&self, key: &str, cost: u32) -> Decision {
        Limiter::check(self, key, cost)
    }
}

/// The policies granted to one module, by name. Built once per activation
/// from the node's limiters (shared `Arc`s: a module and the node's own
/// route limits using one policy share its buckets). Cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimits(Arc<HashMap<String, Arc<dyn RateLimitPolicy>>>);

impl RateLimits {
    /// A registry of `(name, policy)`.
    pub fn new(policies: impl IntoIterator<Item = (String, Arc<dyn RateLimitPolicy>)>) -> Self {
        Self(Arc::new(policies.into_iter().collect()))
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn RateLimitPolicy>> {
        self.0.get(name)
    }
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl rate_limit::Host for StoreState {
    fn check(
        &mut self,
        policy: String,
        key: String,
        cost: u32,
    ) -> Result<rate_limit::Decision, rate_limit::Error> {
        let Some(limiter) = self.call.settings.rate_limits.get(&policy) else {
            return Err(rate_limit::Error::UnknownPolicy);
        };
        let decision = limiter.check(&key, cost);
        Ok(rate_limit::Decision {
            allowed: decision.allowed(),
            remaining: decision.remaining,
            reset: millis_up(decision.reset),
            retry_after: decision.retry_after.map(millis_up),
        })
    }
}

/// Whole milliseconds, rounded up (a wait is never reported shorter than it
/// is).
fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_up(Duration::ZERO), 0);
        assert_eq!(millis_up(Duration::from_nanos(1)), 1);
        assert_eq!(millis_up(Duration::from_millis(100)), 100);
        assert_eq!(millis_up(Duration::from_micros(100_001)), 101);
    }
}
