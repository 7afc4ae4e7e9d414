//! The append-only, hash-chained audit log (`audit.log`, one JSON entry per
//! line), and its verification.
//!
//! Each entry's `hash` is the blake3 (hex) of the entry serialized as JSON
//! without `hash` (fields in declared order, object keys sorted), and its
//! `prev` is the previous entry's `hash`, 64 zeros for the first; `seq`
//! starts at 1 and increases by exactly 1. Verification recomputes all of
//! this, and also requires each line to be byte for byte as it was written,
//! so it names the first line that was edited (with or without its hash
//! recomputed, by the line that follows it), removed (at any position but
//! the end), inserted or moved.
//!
//! What the chain alone cannot detect: removing entries from the end, and
//! rewriting the log from some entry onward with every later hash
//! recomputed (the chain is not a signature). Both leave a log that is
//! consistent but ends at a different hash, so they are detected by
//! comparing [`AuditLog::last_hash`] with a head hash recorded elsewhere.
//!
//! One [`AuditLog`] must be the only writer of its file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::json::parse_strict;
use crate::time::Timestamp;

/// `prev` of the first entry.
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// 1 for the first entry, then +1 per entry.
    pub seq: u64,
    pub at: Timestamp,
    /// `activated`, `refused`, `recovered`, ….
    pub event: String,
    pub details: Value,
    /// `hash` of the previous entry; 64 zeros for the first.
    pub prev: String,
    /// blake3 (hex) of this entry serialized without `hash`.
    pub hash: String,
}

/// What `hash` covers: the entry without it, fields in the same order.
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    at: Timestamp,
    event: &'a str,
    details: &'a Value,
    prev: &'a str,
}

impl AuditEntry {
    /// The hash this entry should carry.
    fn compute_hash(&self) -> String {
        let unhashed = Unhashed {
            seq: self.seq,
            at: self.at,
            event: &self.event,
            details: &self.details,
            prev: &self.prev,
        };
        let bytes = serde_json::to_vec(&unhashed)
            .expect("JSON values, strings, integers and timestamps always serialize");
        blake3::hash(&bytes).to_hex().to_string()
    }
}

/// The first problem found in an audit log: the 1-based line (0 when the
/// file could not be read) and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditProblem {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for AuditProblem {}

/// An open audit log, verified to its last entry, appended to one line at
/// a time.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// Opened for reading and appending.
    file: File,
    len: u64,
    last_hash: String,
    /// Bytes of complete entries; what a failed append is cut back to.
    size: u64,
    /// Set when a failed append could not be cut back: the file may end in
    /// a partial line, and only [`AuditLog::open`] can repair that.
    broken: bool,
}

impl AuditLog {
    /// Opens the log at `path`, creating it (and its directory) if missing.
    ///
    /// An existing log is read and verified entirely. A final line without
    /// a newline (a write torn by a crash) is cut off, the file synced, and
    /// a `recovered` entry with `{"truncated_bytes": N}` appended. Any other
    /// break in the chain is [`Error::State`] naming the line and the
    /// problem; the file is then left as it is.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e: std::io::Error| Error::io(path, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let existed = path.try_exists().map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        if !existed {
            sync_dir(path)?;
        }
        let scan = scan(BufReader::new(&file), |_| {}).map_err(|problem| match problem.line {
            0 => Error::io(path, std::io::Error::other(problem.reason)),
            _ => Error::State {
                path: path.to_owned(),
                reason: problem.to_string(),
            },
        })?;
        let mut log = AuditLog {
            path: path.to_owned(),
            file,
            len: scan.len,
            last_hash: scan.last_hash,
            size: scan.size,
            broken: false,
        };
        if let Some(torn) = scan.torn {
            log.file.set_len(log.size).map_err(io)?;
            log.file.sync_all().map_err(io)?;
            log.append("recovered", serde_json::json!({ "truncated_bytes": torn }))?;
        }
        Ok(log)
    }

    /// Appends one entry for `event` with `details`, timestamped now, and
    /// syncs it to disk before returning it.
    ///
    /// The line is written with one `write_all` in append mode. If writing
    /// or syncing fails, the file is cut back to its previous length and
    /// the entry is not part of the log.
    pub fn append(&mut self, event: &str, details: Value) -> Result<AuditEntry> {
        if self.broken {
            return Err(self.state(
                "an earlier append failed and could not be undone; reopen the log to recover"
                    .to_owned(),
            ));
        }
        let seq = self.len + 1;
        let mut entry = AuditEntry {
            seq,
            at: Timestamp::now(),
            event: event.to_owned(),
            details,
            prev: self.last_hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut line = serde_json::to_string(&entry)
            .expect("JSON values, strings, integers and timestamps always serialize");
        // Never write a line that verification would refuse (details nested
        // too deeply to read back, say): that would break the log for good.
        check_line(line.as_bytes(), seq, &self.last_hash).map_err(|reason| {
            self.state(format!("entry {seq} ({event:?}) not appended: {reason}"))
        })?;
        line.push('\n');

        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            if self.file.set_len(self.size).is_err() {
                self.broken = true;
            }
            return Err(Error::io(&self.path, e));
        }
        self.size += line.len() as u64;
        self.len = seq;
        self.last_hash.clone_from(&entry.hash);
        Ok(entry)
    }

    /// The `hash` of the last entry; 64 zeros if the log is empty.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// The number of entries.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self, reason: String) -> Error {
        Error::State {
            path: self.path.clone(),
            reason,
        }
    }
}

/// Reads and verifies the audit log at `path`, returning all its entries,
/// or the first problem. A final line without a newline is a problem here
/// ("incomplete final line"), though [`AuditLog::open`] repairs it; a file
/// that cannot be read is a problem on line 0.
///
/// See the module documentation for what the chain cannot detect.
pub fn verify_audit_log(path: &Path) -> std::result::Result<Vec<AuditEntry>, AuditProblem> {
    let file = File::open(path).map_err(|e| AuditProblem {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let mut entries = Vec::new();
    let scan = scan(BufReader::new(file), |entry| entries.push(entry))?;
    if let Some(torn) = scan.torn {
        return Err(AuditProblem {
            line: entries.len() + 1,
            reason: format!("incomplete final line ({torn} bytes without a newline; a torn write)"),
        });
    }
    Ok(entries)
}

/// The verified part of a log.
struct Scan {
    len: u64,
    last_hash: String,
    /// Bytes of complete, verified lines.
    size: u64,
    /// Bytes after the last newline, if any.
    torn: Option<u64>,
}

/// Reads lines from `reader`, verifying each against the chain so far and
/// handing it to `each`, up to the end or the first problem.
fn scan(
    mut reader: impl BufRead,
    mut each: impl FnMut(AuditEntry),
) -> std::result::Result<Scan, AuditProblem> {
    let mut scan = Scan {
        len: 0,
        last_hash: ZERO_HASH.to_owned(),
        size: 0,
        torn: None,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditProblem {
                line: 0,
                reason: format!("read failed after line {}: {e}", scan.len),
            })?;
        if n == 0 {
            return Ok(scan);
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            scan.torn = Some(n as u64);
            return Ok(scan);
        };
        let seq = scan.len + 1;
        let entry = check_line(body, seq, &scan.last_hash).map_err(|reason| AuditProblem {
            line: usize::try_from(seq).unwrap_or(usize::MAX),
            reason,
        })?;
        scan.len = seq;
        scan.last_hash.clone_from(&entry.hash);
        scan.size += n as u64;
        each(entry);
    }
}

/// Verifies one line (without its newline) as entry `seq` following an
/// entry whose hash is `prev`.
fn check_line(body: &[u8], seq: u64, prev: &str) -> std::result::Result<AuditEntry, String> {
    if body.is_empty() {
        return Err("is empty".to_owned());
    }
    let entry: AuditEntry =
        parse_strict(body).map_err(|e| format!("is not an audit entry: {e}"))?;
    if entry.seq != seq {
        return Err(format!(
            "seq is {}, expected {seq}: an entry is missing, inserted or moved here",
            entry.seq
        ));
    }
    if entry.prev != prev {
        return Err(if seq == 1 {
            format!(
                "prev is {}, but the first entry's must be 64 zeros",
                entry.prev
            )
        } else {
            format!(
                "prev is {}, but the previous entry's hash is {prev}: the previous entry was \
                 changed, or entries were removed or inserted here",
                entry.prev
            )
        });
    }
    let hash = entry.compute_hash();
    if entry.hash != hash {
        return Err(format!(
            "hash is {}, but the entry hashes to {hash}: the entry was edited",
            entry.hash
        ));
    }
    let canonical = serde_json::to_string(&entry)
        .expect("JSON values, strings, integers and timestamps always serialize");
    if canonical.as_bytes() != body {
        return Err("is not byte for byte as written (reformatted or re-encoded)".to_owned());
    }
    Ok(entry)
}

/// Syncs the directory holding `path`, so that a file just created there
/// survives a crash.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A log of `n` entries in a fresh directory.
    fn log_of(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).expect("open");
        for i in 1..=n {
            log.append(
                "activated",
                json!({ "version": i, "manifest": format!("m{i}") }),
            )
            .expect("append");
        }
        (dir, path)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        let text = fs::read_to_string(path).expect("read");
        text.lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        fs::write(path, text).expect("write");
    }

    fn parse(line: &str) -> AuditEntry {
        serde_json::from_str(line).expect("entry")
    }

    fn render(entry: &AuditEntry) -> String {
        serde_json::to_string(entry).expect("serialize")
    }

    /// Applies `tamper` to the lines of a five-entry log and expects both
    /// verification and opening to report `line` with `reason` in it.
    fn check(tamper: impl FnOnce(&mut Vec<String>), line: usize, reason: &str) {
        let (_dir, path) = log_of(5);
        let mut lines = read_lines(&path);
        tamper(&mut lines);
        write_lines(&path, &lines);

        let problem = verify_audit_log(&path).expect_err("tampering is detected");
        assert_eq!(problem.line, line, "{problem}");
        assert!(
            problem.reason.contains(reason),
            "reason {:?}\nshould contain {reason:?}",
            problem.reason
        );

        let before = fs::read(&path).expect("read");
        match AuditLog::open(&path) {
            Err(Error::State { path: p, reason: r }) => {
                assert_eq!(p, path);
                assert_eq!(r, problem.to_string());
            }
            other => panic!("open should fail with Error::State, got {other:?}"),
        }
        assert_eq!(
            fs::read(&path).expect("read"),
            before,
            "open changed the file"
        );
    }

    #[test]
    fn edited_entry() {
        // Details changed, hash left alone.
        check(
            |lines| lines[2] = lines[2].replace("\"m3\"", "\"evil\""),
            3,
            "the entry was edited",
        );
        // Details changed and hash recomputed: the next entry's prev breaks.
        check(
            |lines| {
                let mut e = parse(&lines[2]);
                e.details = json!({"version": 3, "manifest": "evil"});
                e.hash = e.compute_hash();
                lines[2] = render(&e);
            },
            4,
            "the previous entry was changed",
        );
        // Other fields, hash left alone.
        check(
            |lines| lines[0] = lines[0].replace("activated", "refused"),
            1,
            "edited",
        );
        check(
            |lines| {
                let mut e = parse(&lines[1]);
                e.at = e.at.after(std::time::Duration::from_secs(1));
                lines[1] = render(&e);
            },
            2,
            "edited",
        );
        // Same content, different bytes.
        check(
            |lines| lines[1] = lines[1].replacen(':', ": ", 1),
            2,
            "not byte for byte",
        );
        check(|lines| lines[3].push('\r'), 4, "not byte for byte");
        // Not an entry at all.
        check(
            |lines| lines[4] = "garbage".to_owned(),
            5,
            "is not an audit entry: expected value",
        );
        check(|lines| lines[1] = String::new(), 2, "is empty");
        check(
            |lines| lines[1] = lines[1].replacen('{', "{\"extra\":1,", 1),
            2,
            "unknown field `extra`",
        );
        check(
            |lines| lines[1] = lines[1].replacen("\"details\":{", "\"details\":{\"version\":9,", 1),
            2,
            "duplicate key \"version\" at details.version",
        );
    }

    #[test]
    fn removed_entry() {
        check(
            |lines| {
                lines.remove(0);
            },
            1,
            "seq is 2, expected 1",
        );
        check(
            |lines| {
                lines.remove(2);
            },
            3,
            "seq is 4, expected 3",
        );
        check(
            |lines| {
                lines.remove(3);
            },
            4,
            "seq is 5, expected 4",
        );
        // Removed first entry, later ones renumbered and rehashed from a
        // new first entry whose prev is not zeros.
        check(
            |lines| {
                lines.remove(0);
                let mut prev = parse(&lines[0]).prev;
                for (i, line) in lines.iter_mut().enumerate() {
                    let mut e = parse(line);
                    e.seq = i as u64 + 1;
                    e.prev.clone_from(&prev);
                    e.hash = e.compute_hash();
                    prev.clone_from(&e.hash);
                    *line = render(&e);
                }
            },
            1,
            "the first entry's must be 64 zeros",
        );
    }

    #[test]
    fn inserted_entry() {
        // A copy of an entry.
        check(
            |lines| lines.insert(2, lines[1].clone()),
            3,
            "seq is 2, expected 3",
        );
        // A well-formed entry chained to its predecessor: the next breaks.
        check(
            |lines| {
                let before = parse(&lines[1]);
                let mut e = AuditEntry {
                    seq: 3,
                    at: before.at,
                    event: "activated".to_owned(),
                    details: json!({"version": 99}),
                    prev: before.hash,
                    hash: String::new(),
                };
                e.hash = e.compute_hash();
                lines.insert(2, render(&e));
            },
            4,
            "seq is 3, expected 4",
        );
        // Renumbered, but the chain is not rehashed after it.
        check(
            |lines| {
                let before = parse(&lines[1]);
                let mut e = AuditEntry {
                    seq: 3,
                    at: before.at,
                    event: "activated".to_owned(),
                    details: json!({"version": 99}),
                    prev: before.hash,
                    hash: String::new(),
                };
                e.hash = e.compute_hash();
                lines.insert(2, render(&e));
                for line in &mut lines[3..] {
                    let mut e = parse(line);
                    e.seq += 1;
                    *line = render(&e);
                }
            },
            4,
            "the previous entry was changed",
        );
    }

    #[test]
    fn swapped_entries() {
        check(|lines| lines.swap(1, 2), 2, "seq is 3, expected 2");
        check(|lines| lines.swap(0, 4), 1, "seq is 5, expected 1");
        // Swapped with seq numbers swapped back (hashes left alone).
        check(
            |lines| {
                lines.swap(1, 2);
                let (mut a, mut b) = (parse(&lines[1]), parse(&lines[2]));
                std::mem::swap(&mut a.seq, &mut b.seq);
                lines[1] = render(&a);
                lines[2] = render(&b);
            },
            2,
            "prev is",
        );
    }

    #[test]
    fn removing_the_last_entry_leaves_a_valid_chain_with_another_head() {
        let (_dir, path) = log_of(5);
        let full = verify_audit_log(&path).expect("valid");
        let mut lines = read_lines(&path);
        lines.pop();
        write_lines(&path, &lines);
        let cut = verify_audit_log(&path).expect("the chain alone cannot tell");
        assert_eq!(cut, full[..4]);
        let log = AuditLog::open(&path).expect("open");
        assert_ne!(log.last_hash(), full[4].hash, "only the head hash shows it");
    }

    #[test]
    fn torn_final_line_is_cut_off_and_recorded() {
        for (entries, torn) in [(3u64, "{\"seq\":4,\"at\":\"20"), (0, "{"), (2, "x")] {
            let (_dir, path) = log_of(entries);
            let whole = fs::read(&path).expect("read");
            let mut file = OpenOptions::new().append(true).open(&path).expect("open");
            file.write_all(torn.as_bytes()).expect("write");
            drop(file);

            let problem = verify_audit_log(&path).expect_err("torn");
            assert_eq!(
                problem.to_string(),
                format!(
                    "line {}: incomplete final line ({} bytes without a newline; a torn write)",
                    entries + 1,
                    torn.len()
                )
            );

            let log = AuditLog::open(&path).expect("open recovers");
            assert_eq!(log.len(), entries + 1);
            let after = verify_audit_log(&path).expect("valid after recovery");
            assert_eq!(after.len() as u64, entries + 1);
            let last = after.last().expect("recovered entry");
            assert_eq!(last.event, "recovered");
            assert_eq!(last.details, json!({ "truncated_bytes": torn.len() }));
            assert_eq!(last.hash, log.last_hash());
            let bytes = fs::read(&path).expect("read");
            assert!(bytes.starts_with(&whole), "complete entries are kept");
            assert!(!bytes.ends_with(torn.as_bytes()));
        }
    }

    #[test]
    fn many_appends_round_trip_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/nested/audit.log");
        let mut appended = Vec::new();
        let details = |i: u64| {
            json!({
                "version": i,
                "negative": -(i as i64),
                "ratio": i as f64 / 7.0,
                "tiny": 2.638344616030823e-256,
                "text": format!("naïve \"quoted\" \\ line\nbreak \u{1f980} {i}"),
                "nested": {"z": [1, {"b": null, "a": true}], "a": []},
            })
        };
        for round in 0..3u64 {
            let mut log = AuditLog::open(&path).expect("open");
            assert_eq!(log.len(), round * 20);
            assert_eq!(log.path(), path);
            assert_eq!(
                log.last_hash(),
                appended
                    .last()
                    .map_or(ZERO_HASH, |e: &AuditEntry| e.hash.as_str())
            );
            for i in 0..20 {
                let seq = round * 20 + i + 1;
                let entry = log.append("activated", details(seq)).expect("append");
                assert_eq!(entry.seq, seq);
                assert_eq!(entry.details, details(seq));
                assert_eq!(log.last_hash(), entry.hash);
                appended.push(entry);
            }
        }
        let read = verify_audit_log(&path).expect("valid");
        assert_eq!(read, appended);
        assert_eq!(read[0].prev, ZERO_HASH);
        for pair in read.windows(2) {
            assert_eq!(pair[1].prev, pair[0].hash);
        }
    }

    #[test]
    fn new_log_is_empty_and_first_entry_starts_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).expect("open");
        assert!(log.is_empty());
        assert_eq!(log.last_hash(), ZERO_HASH);
        assert_eq!(verify_audit_log(&path), Ok(Vec::new()));
        let entry = log.append("started", json!({})).expect("append");
        assert_eq!((entry.seq, entry.prev.as_str()), (1, ZERO_HASH));
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn hash_covers_the_entry_without_hash_in_declared_order() {
        let mut entry = AuditEntry {
            seq: 1,
            at: Timestamp::from_unix(0),
            event: "started".to_owned(),
            details: json!({"b": 1, "a": [2.5, "x"]}),
            prev: ZERO_HASH.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let unhashed = format!(
            r#"{{"seq":1,"at":"1970-01-01T00:00:00Z","event":"started","details":{{"a":[2.5,"x"],"b":1}},"prev":"{ZERO_HASH}"}}"#
        );
        assert_eq!(
            entry.hash,
            blake3::hash(unhashed.as_bytes()).to_hex().as_str()
        );
        assert_eq!(
            render(&entry),
            format!(
                "{},\"hash\":\"{}\"}}",
                &unhashed[..unhashed.len() - 1],
                entry.hash
            )
        );
    }

    #[test]
    fn an_entry_that_could_not_be_read_back_is_not_appended() {
        let (_dir, path) = log_of(2);
        let before = fs::read(&path).expect("read");
        let mut log = AuditLog::open(&path).expect("open");
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let err = log.append("refused", deep).expect_err("too deep");
        assert!(
            err.to_string().contains(
                "entry 3 (\"refused\") not appended: is not an audit entry: nesting deeper than 64"
            ),
            "{err}"
        );
        assert_eq!(fs::read(&path).expect("read"), before);
        let entry = log.append("refused", json!({"ok": true})).expect("append");
        assert_eq!(entry.seq, 3);
        assert_eq!(verify_audit_log(&path).expect("valid").len(), 3);
    }

    #[test]
    fn unreadable_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.log");
        let problem = verify_audit_log(&missing).expect_err("missing");
        assert_eq!(problem.line, 0);
        assert!(
            problem.to_string().starts_with("line 0: cannot read "),
            "{problem}"
        );
        // A directory can be opened but not read.
        let problem = verify_audit_log(dir.path()).expect_err("a directory");
        assert_eq!(problem.line, 0, "{problem}");
    }
}
