//! Request coalescing: concurrent misses for one key elect a single leader that goes upstream;
//! the others wait (bounded per key, with a timeout) and reuse what the leader stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::entry::Entry;

/// What a leader reports to its waiters.
#[derive(Debug, Clone)]
enum Outcome {
    Stored(Arc<Entry>),
    Uncacheable,
    Abandoned,
}

#[derive(Debug)]
struct Flight {
    tx: watch::Sender<Option<Outcome>>,
    waiters: AtomicUsize,
}

type Flights = Arc<Mutex<HashMap<Arc<str>, Arc<Flight>>>>;

fn lock(flights: &Flights) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Flight>>> {
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Collapses concurrent misses per key (use the primary key from `Cache::key`).
#[derive(Debug, Clone)]
pub struct Coalescer {
    flights: Flights,
    max_waiters: usize,
    timeout: Duration,
}

/// Why a request goes upstream on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AloneReason {
    /// The leader's response could not be stored.
    Uncacheable,
    /// The leader gave up (error, cancelled) without publishing.
    Abandoned,
    /// The leader took longer than the wait timeout.
    TimedOut,
    /// The key already has the maximum number of waiters.
    TooManyWaiters,
}

/// The result of [`Coalescer::join`].
#[derive(Debug)]
pub enum Joined {
    /// This request fetches: store the response, then publish through the guard.
    Leader(LeaderGuard),
    /// The leader stored this entry: serve it through `Cache::collapsed_hit` (which re-checks
    /// `Vary` and freshness; on `None`, go upstream).
    Collapsed(Arc<Entry>),
    /// Go upstream without coalescing.
    Alone(AloneReason),
}

impl Coalescer {
    /// `max_waiters` per key; waiters give up after `timeout`.
    pub fn new(max_waiters: usize, timeout: Duration) -> Self {
        Self {
            flights: Arc::default(),
            max_waiters,
            timeout,
        }
    }

    /// Joins the flight for `key`: the first caller leads, later callers wait for its outcome.
    pub async fn join(&self, key: &str) -> Joined {
        let (flight, mut rx) = {
            let mut flights = lock(&self.flights);
            match flights.get(key) {
                Some(flight) => {
                    if flight.waiters.load(Ordering::Acquire) >= self.max_waiters {
                        return Joined::Alone(AloneReason::TooManyWaiters);
                    }
                    flight.waiters.fetch_add(1, Ordering::AcqRel);
                    (Arc::clone(flight), flight.tx.subscribe())
                }
                None => {
                    let key: Arc<str> = key.into();
                    let flight = Arc::new(Flight {
                        tx: watch::channel(None).0,
                        waiters: AtomicUsize::new(0),
                    });
                    flights.insert(Arc::clone(&key), Arc::clone(&flight));
                    return Joined::Leader(LeaderGuard {
                        flights: Arc::clone(&self.flights),
                        key,
                        flight,
                        published: false,
                    });
                }
            }
        };
        let waited = tokio::time::timeout(self.timeout, rx.wait_for(Option::is_some)).await;
        flight.waiters.fetch_sub(1, Ordering::AcqRel);
        let outcome = match waited {
            Err(_elapsed) => return Joined::Alone(AloneReason::TimedOut),
            Ok(Err(_closed)) => return Joined::Alone(AloneReason::Abandoned),
            Ok(Ok(value)) => value.clone(),
        };
        match outcome {
            Some(Outcome::Stored(entry)) => Joined::Collapsed(entry),
            Some(Outcome::Uncacheable) => Joined::Alone(AloneReason::Uncacheable),
            Some(Outcome::Abandoned) | None => Joined::Alone(AloneReason::Abandoned),
        }
    }

    /// Requests currently waiting on `key` (for metrics and tests).
    pub fn waiting(&self, key: &str) -> usize {
        lock(&self.flights)
            .get(key)
            .map_or(0, |f| f.waiters.load(Ordering::Acquire))
    }

    /// Keys with a fetch in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// The leader's duty: publish what happened. Dropping it unpublished releases the waiters,
/// who then go upstream themselves.
#[derive(Debug)]
pub struct LeaderGuard {
    flights: Flights,
    key: Arc<str>,
    flight: Arc<Flight>,
    published: bool,
}

impl LeaderGuard {
    /// The response was stored: waiters serve `entry`.
    pub fn publish_stored(mut self, entry: Arc<Entry>) {
        self.finish(Outcome::Stored(entry));
    }

    /// The response was not stored: waiters go upstream.
    pub fn publish_uncacheable(mut self) {
        self.finish(Outcome::Uncacheable);
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.published {
            return;
        }
        self.published = true;
        // Publish before leaving the map, so a request joining in between still sees it.
        self.flight.tx.send_replace(Some(outcome));
        let mut flights = lock(&self.flights);
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::task::JoinSet;

    #[derive(Debug, PartialEq, Eq)]
    enum Role {
        Leader,
        Collapsed,
        Alone(AloneReason),
    }

    /// Spawns `n` joiners on `key`; the leader's guard is sent back to the test.
    fn spawn_joiners(
        c: &Coalescer,
        key: &'static str,
        n: usize,
    ) -> (JoinSet<Role>, mpsc::UnboundedReceiver<LeaderGuard>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let c = c.clone();
            let tx = tx.clone();
            tasks.spawn(async move {
                match c.join(key).await {
                    Joined::Leader(guard) => {
                        let _ = tx.send(guard);
                        Role::Leader
                    }
                    Joined::Collapsed(_) => Role::Collapsed,
                    Joined::Alone(reason) => Role::Alone(reason),
                }
            });
        }
        (tasks, rx)
    }

    async fn wait_for_waiters(c: &Coalescer, key: &str, n: usize) {
        while c.waiting(key) < n {
            tokio::task::yield_now().await;
        }
    }

    async fn roles(mut tasks: JoinSet<Role>) -> Vec<Role> {
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.unwrap());
        }
        out
    }

    fn count(roles: &[Role], role: &Role) -> usize {
        roles.iter().filter(|r| *r == role).count()
    }

    #[tokio::test]
    async fn hundred_concurrent_misses_elect_exactly_one_leader() {
        let c = Coalescer::new(1000, Duration::from_secs(30));
        let (tasks, mut rx) = spawn_joiners(&c, "k", 100);
        let guard = rx.recv().await.unwrap();
        wait_for_waiters(&c, "k", 99).await;
        guard.publish_stored(Entry::for_tests("k", b"body"));
        let roles = roles(tasks).await;
        assert_eq!(count(&roles, &Role::Leader), 1);
        assert_eq!(count(&roles, &Role::Collapsed), 99);
        assert_eq!(c.in_flight(), 0);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn uncacheable_and_abandoned_release_waiters() {
        let c = Coalescer::new(1000, Duration::from_secs(30));
        let (tasks, mut rx) = spawn_joiners(&c, "u", 5);
        let guard = rx.recv().await.unwrap();
        wait_for_waiters(&c, "u", 4).await;
        guard.publish_uncacheable();
        let r = roles(tasks).await;
        assert_eq!(count(&r, &Role::Alone(AloneReason::Uncacheable)), 4);

        let (tasks, mut rx) = spawn_joiners(&c, "a", 5);
        let guard = rx.recv().await.unwrap();
        wait_for_waiters(&c, "a", 4).await;
        drop(guard);
        let r = roles(tasks).await;
        assert_eq!(count(&r, &Role::Alone(AloneReason::Abandoned)), 4);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiters_are_bounded_per_key() {
        let c = Coalescer::new(3, Duration::from_secs(30));
        let (mut tasks, mut rx) = spawn_joiners(&c, "b", 10);
        let guard = rx.recv().await.unwrap();
        // The leader and the six turned-away requests finish without waiting.
        let mut r = Vec::new();
        for _ in 0..7 {
            r.push(tasks.join_next().await.unwrap().unwrap());
        }
        assert_eq!(c.waiting("b"), 3);
        guard.publish_stored(Entry::for_tests("b", b"x"));
        r.extend(roles(tasks).await);
        assert_eq!(count(&r, &Role::Leader), 1);
        assert_eq!(count(&r, &Role::Collapsed), 3);
        assert_eq!(count(&r, &Role::Alone(AloneReason::TooManyWaiters)), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_time_out() {
        let c = Coalescer::new(10, Duration::from_secs(5));
        let (tasks, mut rx) = spawn_joiners(&c, "t", 3);
        let guard = rx.recv().await.unwrap();
        // Paused time auto-advances once every task is idle: the waiters time out.
        let r = roles(tasks).await;
        assert_eq!(count(&r, &Role::Alone(AloneReason::TimedOut)), 2);
        drop(guard);
        // A new request after the leader finished leads again.
        assert!(matches!(c.join("t").await, Joined::Leader(_)));
    }
}
