//! The edge's state directory: blobs by hash, manifests as received, the
//! trust state, and `current.json` — which bundle is active and which came
//! before it.
//!
//! Immutable files (blobs, manifests, roots) are written to `tmp/`,
//! fsynced, renamed into place, and the directory fsynced. The mutable
//! files (`current.json`, `trust.json`, `keyset.json`) are each replaced by
//! one rename, so a crash leaves either the old or the new file, whole.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::documents::Manifest;
use crate::error::{Error, Result};
use crate::keys::check_hash_hex;
use crate::time::Timestamp;
use crate::trust::TrustState;

/// One installed bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// blake3 of the manifest envelope.
    pub manifest: String,
    pub version: u64,
    pub activated: Timestamp,
}

/// `current.json`: the active bundle and the ones before it, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Current {
    pub active: Option<Installed>,
    pub previous: Vec<Installed>,
    /// A version this node reverted from (by its health check or an
    /// operator): not activated again; cleared when a newer one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
}

impl Current {
    /// `next` becomes active; the old active one heads `previous`, which
    /// keeps at most `keep - 1` entries (so `keep` bundles in all).
    pub fn activate(&self, next: Installed, keep: usize) -> Current {
        let mut previous: Vec<Installed> = self
            .active
            .iter()
            .chain(self.previous.iter())
            .filter(|i| i.manifest != next.manifest)
            .cloned()
            .collect();
        previous.truncate(keep.saturating_sub(1));
        // A version above the quarantined one lifts the quarantine.
        let quarantined = self.quarantined.filter(|q| *q >= next.version);
        Current {
            active: Some(next),
            previous,
            quarantined,
        }
    }

    /// Every manifest kept (active and previous).
    pub fn kept(&self) -> impl Iterator<Item = &Installed> {
        self.active.iter().chain(self.previous.iter())
    }
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

const TRUST: &str = "trust.json";
const CURRENT: &str = "current.json";
const KEYSET: &str = "keyset.json";

impl Store {
    /// Opens (creating) the state directory and empties `tmp/`, which only
    /// ever holds the leftovers of an interrupted write.
    pub fn open(dir: &Path) -> Result<Self> {
        for sub in ["", "tmp", "blobs", "manifests", "roots"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let tmp = dir.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Where the blob with this hash lives. The hash is checked for shape
    /// first: it comes from a signed document, but it becomes a file name.
    pub fn blob_path(&self, hash: &str) -> Result<PathBuf> {
        check_hash_hex(hash).map_err(|reason| Error::State {
            path: self.dir.join("blobs"),
            reason,
        })?;
        Ok(self.dir.join("blobs").join(&hash[..2]).join(hash))
    }

    /// Whether the blob is present with the right size. (Its content is
    /// verified when it is staged and again when the node starts.)
    pub fn has_blob(&self, hash: &str, size: u64) -> bool {
        self.blob_path(hash)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Starts writing a blob that must hash to `hash` and be `size` bytes.
    pub fn stage_blob(&self, hash: &str, size: u64) -> Result<BlobWriter> {
        let dest = self.blob_path(hash)?;
        let (tmp, file) = self.tmp_file()?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest,
            hasher: blake3::Hasher::new(),
            written: 0,
            hash: hash.to_string(),
            size,
        })
    }

    /// Stores a whole blob held in memory.
    pub fn put_blob(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        let mut w = self.stage_blob(hash, bytes.len() as u64)?;
        w.write(bytes)?;
        w.finish()
    }

    /// Reads a blob and checks it against its hash and size.
    pub fn read_blob(&self, hash: &str, size: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(hash)?;
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        check_content(&path, &bytes, hash, size)?;
        Ok(bytes)
    }

    /// Hashes a stored blob without holding it in memory.
    pub fn verify_blob(&self, hash: &str, size: u64) -> Result<()> {
        let path = self.blob_path(hash)?;
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(&path, e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        if total != size {
            return Err(Error::SizeMismatch {
                what: path.display().to_string(),
                expected: size,
                actual: total,
            });
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != hash {
            return Err(Error::HashMismatch {
                what: path.display().to_string(),
                expected: hash.to_string(),
                actual,
            });
        }
        Ok(())
    }

    fn manifest_path(&self, hash: &str) -> Result<PathBuf> {
        check_hash_hex(hash).map_err(|reason| Error::State {
            path: self.dir.join("manifests"),
            reason,
        })?;
        Ok(self.dir.join("manifests").join(format!("{hash}.json")))
    }

    /// Stores a manifest envelope as received; `hash` is its blake3.
    pub fn put_manifest(&self, hash: &str, envelope: &[u8]) -> Result<()> {
        let path = self.manifest_path(hash)?;
        check_content(&path, envelope, hash, envelope.len() as u64)?;
        self.write_atomic(&path, envelope)
    }

    /// A stored manifest envelope, checked against its hash.
    pub fn read_manifest(&self, hash: &str) -> Result<Vec<u8>> {
        let path = self.manifest_path(hash)?;
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let size = bytes.len() as u64;
        check_content(&path, &bytes, hash, size)?;
        Ok(bytes)
    }

    /// Keeps a verified root document, as received.
    pub fn put_root(&self, version: u64, envelope: &[u8]) -> Result<()> {
        self.write_atomic(
            &self.dir.join("roots").join(format!("{version}.json")),
            envelope,
        )
    }

    /// Keeps the newest verified keyset, as received.
    pub fn put_keyset(&self, envelope: &[u8]) -> Result<()> {
        self.write_atomic(&self.dir.join(KEYSET), envelope)
    }

    pub fn load_trust(&self) -> Result<Option<TrustState>> {
        self.load_json(TRUST)
    }

    pub fn save_trust(&self, state: &TrustState) -> Result<()> {
        self.save_json(TRUST, state)
    }

    pub fn current(&self) -> Result<Current> {
        Ok(self.load_json(CURRENT)?.unwrap_or_default())
    }

    /// Replaces `current.json` in one rename: the activation's commit point.
    pub fn set_current(&self, current: &Current) -> Result<()> {
        self.save_json(CURRENT, current)
    }

    /// Removes manifests and blobs that no kept manifest needs. Returns the
    /// number of files removed.
    pub fn collect_garbage(&self, current: &Current, kept: &[&Manifest]) -> Result<usize> {
        let manifests: BTreeSet<String> = current
            .kept()
            .map(|i| format!("{}.json", i.manifest))
            .collect();
        let blobs: BTreeSet<&str> = kept
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.blake3.as_str()))
            .collect();
        let mut removed = 0;
        let mdir = self.dir.join("manifests");
        for entry in fs::read_dir(&mdir)
            .map_err(|e| Error::io(&mdir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !manifests.contains(&name) && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        let bdir = self.dir.join("blobs");
        for shard in fs::read_dir(&bdir)
            .map_err(|e| Error::io(&bdir, e))?
            .flatten()
        {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in files.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !blobs.contains(name.as_str()) && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn load_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::State {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::State {
            path: self.dir.join(name),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        self.write_atomic(&self.dir.join(name), &bytes)
    }

    fn tmp_file(&self) -> Result<(PathBuf, File)> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok((path, file))
    }

    /// temp file, write, fsync, rename over `dest`, fsync the directory.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let (tmp, mut file) = self.tmp_file()?;
        let result = (|| {
            file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            drop(file);
            install(&tmp, dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Renames `tmp` to `dest` (creating its directory) and fsyncs the
/// directory so the rename itself is durable.
fn install(tmp: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))?;
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(parent, e))
}

fn check_content(path: &Path, bytes: &[u8], hash: &str, size: u64) -> Result<()> {
    if bytes.len() as u64 != size {
        return Err(Error::SizeMismatch {
            what: path.display().to_string(),
            expected: size,
            actual: bytes.len() as u64,
        });
    }
    let actual = blake3::hash(bytes).to_hex().to_string();
    if actual != hash {
        return Err(Error::HashMismatch {
            what: path.display().to_string(),
            expected: hash.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A blob being written: counted against its declared size as it arrives,
/// hashed, and installed only if both match. Dropped unfinished, it
/// removes its temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    hasher: blake3::Hasher,
    written: u64,
    hash: String,
    size: u64,
}

impl BlobWriter {
    /// Appends a chunk; refuses one that would pass the declared size.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let total = self.written.saturating_add(chunk.len() as u64);
        if total > self.size {
            return Err(Error::SizeMismatch {
                what: format!("blob {}", self.hash),
                expected: self.size,
                actual: total,
            });
        }
        let file = self.file.as_mut().ok_or_else(|| Error::State {
            path: self.tmp.clone(),
            reason: "blob writer already finished".into(),
        })?;
        file.write_all(chunk).map_err(|e| Error::io(&self.tmp, e))?;
        self.hasher.update(chunk);
        self.written = total;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and hash, fsyncs and installs the blob.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.size {
            return Err(Error::SizeMismatch {
                what: format!("blob {}", self.hash),
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = self.hasher.finalize().to_hex().to_string();
        if actual != self.hash {
            return Err(Error::HashMismatch {
                what: format!("blob {}", self.hash),
                expected: self.hash.clone(),
                actual,
            });
        }
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        install(&self.tmp, &self.dest)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful install the temp path no longer exists.
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    #[test]
    fn blobs_are_checked_while_and_after_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let data = b"hello bundle";
        let h = hash(data);
        assert!(!store.has_blob(&h, data.len() as u64));
        store.put_blob(&h, data).expect("stored");
        assert!(store.has_blob(&h, data.len() as u64));
        assert_eq!(store.read_blob(&h, data.len() as u64).expect("read"), data);
        store.verify_blob(&h, data.len() as u64).expect("verifies");

        // Too many bytes: refused at the write that passes the size.
        let mut w = store.stage_blob(&hash(b"abc"), 3).expect("stage");
        assert!(matches!(w.write(b"abcd"), Err(Error::SizeMismatch { .. })));
        drop(w);
        // Wrong content: refused at finish, nothing installed.
        let mut w = store.stage_blob(&hash(b"abc"), 3).expect("stage");
        w.write(b"abd").expect("size fits");
        assert!(matches!(w.finish(), Err(Error::HashMismatch { .. })));
        assert!(!store.has_blob(&hash(b"abc"), 3));
        // Short: refused.
        let mut w = store.stage_blob(&hash(b"abc"), 3).expect("stage");
        w.write(b"ab").expect("fits");
        assert!(matches!(w.finish(), Err(Error::SizeMismatch { .. })));
        // No temp files left behind.
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn a_corrupted_blob_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let h = hash(b"content");
        store.put_blob(&h, b"content").expect("stored");
        fs::write(store.blob_path(&h).expect("path"), b"CONTENT").expect("corrupt");
        assert!(matches!(
            store.verify_blob(&h, 7),
            Err(Error::HashMismatch { .. })
        ));
        assert!(store.read_blob(&h, 7).is_err());
    }

    #[test]
    fn hashes_never_become_odd_file_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for bad in ["../../etc/passwd", "", "ABCDEF", &"a".repeat(63)] {
            assert!(store.blob_path(bad).is_err(), "{bad}");
            assert!(store.stage_blob(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn current_keeps_a_bounded_history_and_open_cleans_tmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.current().expect("empty"), Current::default());
        let inst = |v: u64| Installed {
            manifest: hash(&v.to_le_bytes()),
            version: v,
            activated: Timestamp::from_unix(v),
        };
        let mut cur = Current::default();
        for v in 1..=5 {
            cur = cur.activate(inst(v), 3);
        }
        assert_eq!(cur.active.as_ref().map(|i| i.version), Some(5));
        assert_eq!(
            cur.previous.iter().map(|i| i.version).collect::<Vec<_>>(),
            vec![4, 3]
        );
        let q = Current {
            quarantined: Some(5),
            ..cur.clone()
        };
        assert_eq!(q.activate(inst(4), 3).quarantined, Some(5), "still above");
        assert_eq!(
            q.activate(inst(6), 3).quarantined,
            None,
            "a newer version lifts it"
        );
        store.set_current(&cur).expect("saved");
        fs::write(dir.path().join("tmp").join("leftover.part"), b"x").expect("leftover");
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.current().expect("loads"), cur);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn garbage_collection_keeps_what_kept_manifests_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b) = (hash(b"a"), hash(b"b"));
        store.put_blob(&a, b"a").expect("a");
        store.put_blob(&b, b"b").expect("b");
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "environment": "e", "regions": ["r"], "version": 1,
            "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z",
            "min_runtime": "0.1.0", "config": {"edge": "x"},
            "files": [{"path": "x", "blake3": a, "size": 1, "content_type": "text/plain"}],
            "totals": {"files": 1, "bytes": 1}
        }))
        .expect("manifest");
        let removed = store
            .collect_garbage(&Current::default(), &[&m])
            .expect("gc");
        assert_eq!(removed, 1);
        assert!(store.has_blob(&a, 1));
        assert!(!store.has_blob(&b, 1));
    }
}
