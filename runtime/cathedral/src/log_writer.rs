//! The log writer behind the tracing subscriber: formatted lines are
//! gathered in memory and one thread writes them to the output in batches.
//!
//! The access log is one line per request. Handing each line to a writer
//! thread on its own (as `tracing_appender::non_blocking` does) costs a
//! thread wake-up, two context switches and a `write` per request; here a
//! request appends its line under a short lock, and the writer wakes once
//! per batch: when the first line of a batch arrives it waits up to
//! [`FLUSH_INTERVAL`] for more, or until [`FLUSH_AT`] bytes are waiting, or
//! at once for a `WARN`/`ERROR` line. Like the appender it replaces, it
//! never blocks a request on output: past [`MAX_PENDING`] bytes (the output
//! stalled) lines are dropped and counted, and the count is written when
//! the output moves again. Dropping the [`Guard`] writes what is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in memory.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A batch this large is written without waiting for the interval.
pub const FLUSH_AT: usize = 64 * 1024;
/// Bytes waiting beyond which new lines are dropped.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// A [`MakeWriter`] for the fmt subscriber; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    inner: Arc<Inner>,
}

/// Stops the writer thread when dropped, after it wrote every waiting line.
pub struct Guard {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    interval: Duration,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    dropped: u64,
    /// A `WARN` or `ERROR` line is waiting: write now.
    urgent: bool,
    closing: bool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the writer thread over `out`.
pub fn batched<W: Write + Send + 'static>(out: W) -> std::io::Result<(BatchWriter, Guard)> {
    batched_every(out, FLUSH_INTERVAL)
}

fn batched_every<W: Write + Send + 'static>(
    out: W,
    interval: Duration,
) -> std::io::Result<(BatchWriter, Guard)> {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        interval,
    });
    let thread = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || run(&inner, out))?
    };
    Ok((
        BatchWriter {
            inner: inner.clone(),
        },
        Guard {
            inner,
            thread: Some(thread),
        },
    ))
}

fn run(inner: &Inner, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        let (mut batch, dropped, closing) = {
            let mut state = inner.lock();
            while state.pending.is_empty() && !state.closing {
                state = inner
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // The first line of a batch is here: let more join it.
            let deadline = Instant::now() + inner.interval;
            while state.pending.len() < FLUSH_AT && !state.urgent && !state.closing {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                state = inner
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.urgent = false;
            let batch = std::mem::replace(&mut state.pending, std::mem::take(&mut spare));
            (batch, std::mem::take(&mut state.dropped), state.closing)
        };
        if dropped > 0 {
            let _ = writeln!(
                out,
                "{dropped} log lines dropped: the log output did not keep up"
            );
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
        batch.clear();
        // A burst's buffer is not kept for good.
        if batch.capacity() > 4 * FLUSH_AT {
            batch = Vec::new();
        }
        spare = batch;
        if closing && inner.lock().pending.is_empty() {
            return;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.inner.lock().closing = true;
        self.inner.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One formatted event's writer.
pub struct Handle<'a> {
    inner: &'a Inner,
    urgent: bool,
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Handle<'a>;

    fn make_writer(&'a self) -> Handle<'a> {
        Handle {
            inner: &self.inner,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Handle<'a> {
        Handle {
            inner: &self.inner,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for Handle<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let wake = {
            let mut state = self.inner.lock();
            let before = state.pending.len();
            if before + buf.len() > MAX_PENDING {
                state.dropped += 1;
                return Ok(buf.len());
            }
            state.pending.extend_from_slice(buf);
            state.urgent |= self.urgent;
            before == 0 || self.urgent || (before < FLUSH_AT && state.pending.len() >= FLUSH_AT)
        };
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read and wait on while the writer thread
    /// holds it.
    #[derive(Clone, Default)]
    struct Shared(Arc<(Mutex<Vec<u8>>, Condvar)>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.0.lock().expect("output").extend_from_slice(buf);
            self.0.1.notify_all();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.0.lock().expect("output").clone()).expect("utf-8")
        }

        /// The output once something was written (at most `limit` later).
        fn first_batch(&self, limit: Duration) -> String {
            let written = self.0.0.lock().expect("output");
            let (written, _) = self
                .0
                .1
                .wait_timeout_while(written, limit, |w| w.is_empty())
                .expect("output");
            String::from_utf8(written.clone()).expect("utf-8")
        }
    }

    #[test]
    fn lines_are_written_in_order_and_all_of_them_on_drop() {
        let out = Shared::default();
        let (writer, guard) = batched(out.clone()).expect("thread");
        for i in 0..1000 {
            writeln!(writer.make_writer(), "line {i}").expect("write");
        }
        drop(guard);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), expected);
    }

    #[test]
    fn a_warning_is_written_at_once_with_the_lines_before_it() {
        // With an hour's interval only the warning can get the batch out.
        let out = Shared::default();
        let (writer, _guard) =
            batched_every(out.clone(), Duration::from_secs(3600)).expect("thread");
        writeln!(writer.make_writer(), "info").expect("write");
        let mut warn = Handle {
            inner: &writer.inner,
            urgent: true,
        };
        writeln!(warn, "warn").expect("write");
        assert_eq!(out.first_batch(Duration::from_secs(60)), "info\nwarn\n");
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_for_the_interval() {
        let out = Shared::default();
        let (writer, _guard) =
            batched_every(out.clone(), Duration::from_secs(3600)).expect("thread");
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..FLUSH_AT / 1024 {
            writer
                .make_writer()
                .write_all(line.as_bytes())
                .expect("write");
        }
        assert_eq!(out.first_batch(Duration::from_secs(60)).len(), FLUSH_AT);
    }

    #[test]
    fn lines_past_the_cap_are_dropped_and_counted() {
        let inner = Inner {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            interval: FLUSH_INTERVAL,
        };
        let mut handle = Handle {
            inner: &inner,
            urgent: false,
        };
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..20 {
            handle.write_all(&line).expect("write");
        }
        let state = inner.lock();
        assert_eq!(state.pending.len(), MAX_PENDING);
        assert_eq!(state.dropped, 4);
    }
}
