//! The JSON log format: access-log lines (target `cathedral::access`, one
//! per request) are written straight into the line buffer; every other
//! event goes to tracing-subscriber's JSON formatter, whose output the
//! access lines match byte for byte.
//!
//! The stock formatter serialises through serde_json into an `io::Write`
//! adapter over a `fmt::Write`, checking every fragment as UTF-8 again;
//! at one line per request that was the largest part of the log's cost.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The access log's target (see `cathedral_edge::service`).
pub const ACCESS_TARGET: &str = "cathedral::access";

/// Access-log events formatted directly, the rest by `inner` (the stock
/// flattened JSON format, timestamps from [`SystemTime`], no spans).
pub struct Json<E> {
    pub inner: E,
}

impl<S, N, E> FormatEvent<S, N> for Json<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Inside a span the stock format adds a span list: leave it to it.
        if meta.target() != ACCESS_TARGET
            || event.parent().is_some()
            || ctx.lookup_current().is_some()
        {
            return self.inner.format_event(ctx, writer, event);
        }
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`, as serde_json would.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                string(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's own float format (and `null` for NaN and infinities).
        self.entry(field, |w| write!(w, "{}", serde_json::Value::from(value)));
    }
}

/// `value` as a JSON string.
fn string(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(&mut *w).write_str(value)?;
    w.write_char('"')
}

/// Escapes what passes through as serde_json escapes string contents:
/// `"`, `\` and control characters; everything else as is.
struct Escaped<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !NEEDS_ESCAPE[usize::from(b)] {
                continue;
            }
            // Only ASCII bytes are escaped, so `i` is a char boundary.
            self.0.write_str(&s[start..i])?;
            match b {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                _ => write!(self.0, "\\u{b:04x}")?,
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

/// The bytes serde_json escapes in strings: control characters, `"`, `\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let samples = [
            "plain",
            "",
            "quote \" backslash \\ slash /",
            "controls \n \r \t \u{8} \u{c} \u{0} \u{1f} \u{7f}",
            "non-ASCII é ü 日本 🦀",
            "\"\"\\\\",
        ];
        for sample in samples {
            let mut ours = String::new();
            string(&mut ours, sample).expect("write");
            let theirs = serde_json::to_string(sample).expect("serialize");
            assert_eq!(ours, theirs, "{sample:?}");
        }
    }

    use crate::log_format::Capture;

    fn stock() -> tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json> {
        tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
    }

    /// What `emit` logs, through the stock format and through ours, with
    /// the timestamps cut out.
    fn both(emit: impl Fn()) -> (String, String) {
        let run = |ours: bool| {
            let out = Capture::default();
            let writer = out.clone();
            let builder = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .json();
            let dispatch: tracing::Dispatch = if ours {
                builder
                    .event_format(Json { inner: stock() })
                    .finish()
                    .into()
            } else {
                builder.event_format(stock()).finish().into()
            };
            tracing::dispatcher::with_default(&dispatch, &emit);
            let text = String::from_utf8(out.0.lock().expect("capture").clone()).expect("utf-8");
            text.lines()
                .map(|line| {
                    let (head, rest) = line.split_once("\",\"level\"").expect("level");
                    assert!(head.starts_with("{\"timestamp\":\"2"), "{line}");
                    format!("{{\"level\"{rest}\n")
                })
                .collect::<String>()
        };
        (run(false), run(true))
    }

    #[test]
    fn access_lines_match_the_stock_json_format() {
        let (stock, ours) = both(|| {
            tracing::info!(
                target: "cathedral::access",
                client = %"::1",
                path = %"/é \"q\" \\ \u{1}\n",
                proto = ?http::Version::HTTP_2,
                status = 404u16,
                bytes = u64::MAX,
                delta = -3i64,
                complete = false,
                duration_ms = 0.000_000_1f64,
                whole = 2.0f64,
                nan = f64::NAN,
                route = "r\"oute",
                "request"
            );
            tracing::warn!(target: "cathedral::access", "no fields");
        });
        assert_eq!(ours, stock);
        assert_eq!(ours.lines().count(), 2);
    }

    #[test]
    fn other_events_and_events_in_spans_are_left_to_the_stock_format() {
        let (stock, ours) = both(|| {
            tracing::info!(target: "cathedral", answer = 42, "started");
            let span = tracing::info_span!("request", id = 7);
            let _entered = span.enter();
            tracing::info!(target: "cathedral::access", status = 200u16, "request");
        });
        assert_eq!(ours, stock);
        assert!(ours.contains("\"spans\":[{"), "{ours}");
    }
}

/// Everything a test subscriber wrote, for the crate's log tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Capture(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
