//! The answer to one check: [`Decision`] and its [`Outcome`], and the
//! `RateLimit` / `Retry-After` header values derived from it.

use std::time::Duration;

use crate::headers;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Admitted; its cost was taken from the bucket. A pure query (cost 0)
    /// on a key outside the penalty box is also `Allowed`.
    Allowed,
    /// Refused: the bucket lacks the cost now; `retry_after` says when it
    /// will have it.
    Limited,
    /// Refused: the key is in the penalty box (it was just put there by this
    /// request, or is still serving an earlier one); `retry_after` says when
    /// it is released and the cost fits.
    Penalized,
    /// Refused, and always will be: the cost is larger than the burst.
    /// `retry_after` is `None`.
    ExceedsBurst,
}

/// The answer to [`crate::Limiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "a rate-limit decision that is not looked at limits nothing"]
pub struct Decision {
    /// Admitted or not, and why.
    pub outcome: Outcome,
    /// The bucket size (the quota's burst).
    pub limit: u32,
    /// Units that could be spent right now, after this request (0 while
    /// penalized).
    pub remaining: u32,
    /// Time until the bucket is full again (and any penalty is over).
    pub reset: Duration,
    /// When refused: the wait until this request's cost would be admitted.
    /// `None` when admitted, and for [`Outcome::ExceedsBurst`].
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }

    /// Whether the key is in the penalty box.
    pub fn penalized(&self) -> bool {
        self.outcome == Outcome::Penalized
    }

    /// The `Retry-After` value in seconds: `retry_after` rounded up, at
    /// least 1; `None` when there is nothing to wait for.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(headers::retry_after_secs)
    }

    /// The `RateLimit` field value:
    /// `"<policy>";r=<remaining>;t=<reset seconds, rounded up>`.
    pub fn ratelimit_header(&self, policy: &str) -> String {
        headers::ratelimit(policy, self.remaining, self.reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_and_headers() {
        #[track_caller]
        fn check(
            outcome: Outcome,
            retry_after: Option<Duration>,
            expected: (bool, bool, Option<u64>),
        ) {
            let d = Decision {
                outcome,
                limit: 20,
                remaining: 3,
                reset: Duration::from_millis(1500),
                retry_after,
            };
            let got = (d.allowed(), d.penalized(), d.retry_after_secs());
            assert_eq!(got, expected, "{d:?}");
            assert_eq!(d.ratelimit_header("api"), r#""api";r=3;t=2"#);
        }
        let ms = Duration::from_millis;
        check(Outcome::Allowed, None, (true, false, None));
        check(Outcome::Limited, Some(ms(10)), (false, false, Some(1)));
        check(Outcome::Limited, Some(ms(1000)), (false, false, Some(1)));
        check(Outcome::Limited, Some(ms(1001)), (false, false, Some(2)));
        check(
            Outcome::Penalized,
            Some(ms(30_000)),
            (false, true, Some(30)),
        );
        check(Outcome::ExceedsBurst, None, (false, false, None));
    }
}
