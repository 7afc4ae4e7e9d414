//! Building a bundle: a [`Draft`] collects files (bytes in memory, or files
//! on disk hashed by streaming), makes the unsigned [`Manifest`], and writes
//! the unsigned bundle directory that `cathedral bundle sign` signs.
//!
//! The directory holds `manifest.json` — the exact payload bytes that get
//! signed — and `blobs/<blake3>`, one file per distinct content. A file
//! added from disk is hashed when it is added and hashed again while it is
//! copied; if it changed in between, writing fails rather than ship a blob
//! that does not match its manifest entry.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::documents::{ConfigRef, FileEntry, MANIFEST_FORMAT, Manifest, Totals};
use crate::error::{Error, Result};
use crate::path::{PathLimits, validate_path};
use crate::time::Timestamp;

/// How long a manifest is valid unless [`Draft::expires_after`] says
/// otherwise.
const DEFAULT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The unsigned payload in a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The signed envelope in a bundle directory.
pub const SIGNED_MANIFEST_FILE: &str = "manifest.signed.json";

/// A bundle being built.
#[derive(Debug)]
pub struct Draft {
    environment: String,
    regions: Vec<String>,
    version: u64,
    created: Timestamp,
    expires: Timestamp,
    min_runtime: String,
    config: ConfigRef,
    /// By bundle path; a `BTreeMap<String, _>` iterates in byte order, the
    /// manifest's order.
    files: BTreeMap<String, DraftFile>,
}

#[derive(Debug)]
struct DraftFile {
    blake3: String,
    size: u64,
    content_type: String,
    content: Content,
}

#[derive(Debug)]
enum Content {
    Bytes(Vec<u8>),
    /// Copied when the bundle is written; it must still hash the same.
    File(PathBuf),
}

impl Draft {
    /// An empty bundle for `environment` and `regions`, created now,
    /// expiring in 90 days, for this runtime's version or newer.
    pub fn new(environment: &str, regions: Vec<String>, version: u64, config: ConfigRef) -> Self {
        let created = Timestamp::now();
        Self {
            environment: environment.to_owned(),
            regions,
            version,
            created,
            expires: created.after(DEFAULT_VALIDITY),
            min_runtime: env!("CARGO_PKG_VERSION").to_owned(),
            config,
            files: BTreeMap::new(),
        }
    }

    /// The manifest expires `d` after it was created.
    pub fn expires_after(&mut self, d: Duration) {
        self.expires = self.created.after(d);
    }

    /// The oldest runtime that may run the bundle (`major.minor.patch`;
    /// checked by [`Draft::manifest`]).
    pub fn min_runtime(&mut self, v: &str) {
        v.clone_into(&mut self.min_runtime);
    }

    /// Adds a file held in memory at bundle path `path`.
    pub fn add_bytes(&mut self, path: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.check_new(path)?;
        let file = DraftFile {
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            size: bytes.len() as u64,
            content_type: content_type.to_owned(),
            content: Content::Bytes(bytes),
        };
        self.files.insert(path.to_owned(), file);
        Ok(())
    }

    /// Adds the file at `file` on disk at bundle path `path`. It is hashed
    /// now, by streaming, and copied when the bundle is written.
    pub fn add_file(&mut self, path: &str, file: &Path, content_type: &str) -> Result<()> {
        self.check_new(path)?;
        let (blake3, size) = hash_file(file, &mut |_| {})?;
        let entry = DraftFile {
            blake3,
            size,
            content_type: content_type.to_owned(),
            content: Content::File(file.to_path_buf()),
        };
        self.files.insert(path.to_owned(), entry);
        Ok(())
    }

    /// Whether a file was added at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    fn check_new(&self, path: &str) -> Result<()> {
        validate_path(path, &PathLimits::default())?;
        if self.files.contains_key(path) {
            return Err(Error::InvalidPath {
                path: path.to_owned(),
                reason: "is added twice".to_owned(),
            });
        }
        Ok(())
    }

    /// The manifest of the files added so far: sorted, with totals, and
    /// checked ([`Manifest::check`] with the default path limits).
    pub fn manifest(&self) -> Result<Manifest> {
        let files: Vec<FileEntry> = self
            .files
            .iter()
            .map(|(path, f)| FileEntry {
                path: path.clone(),
                blake3: f.blake3.clone(),
                size: f.size,
                content_type: f.content_type.clone(),
            })
            .collect();
        let totals = Totals {
            files: files.len() as u64,
            bytes: files.iter().fold(0u64, |n, f| n.saturating_add(f.size)),
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            environment: self.environment.clone(),
            regions: self.regions.clone(),
            version: self.version,
            created: self.created,
            expires: self.expires,
            min_runtime: self.min_runtime.clone(),
            config: self.config.clone(),
            files,
            totals,
        };
        manifest.check(&PathLimits::default(), u64::MAX)?;
        Ok(manifest)
    }

    /// Writes the unsigned bundle into `dir`, which must be missing or
    /// empty: `manifest.json` (the payload to sign, pretty JSON) and
    /// `blobs/<blake3>` for each distinct content. Returns the manifest.
    pub fn write_dir(&self, dir: &Path) -> Result<Manifest> {
        let manifest = self.manifest()?;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        if entries.next().is_some() {
            return Err(Error::State {
                path: dir.to_path_buf(),
                reason: "is not empty; build each bundle into a new directory".to_owned(),
            });
        }
        let blobs = dir.join("blobs");
        fs::create_dir(&blobs).map_err(|e| Error::io(&blobs, e))?;
        for f in self.files.values() {
            let dest = blobs.join(&f.blake3);
            if dest.exists() {
                continue; // the same content under another path
            }
            match &f.content {
                Content::Bytes(bytes) => write_atomic(&dest, bytes)?,
                Content::File(src) => {
                    copy_checked(src, &dest, &f.blake3, f.size, &mut |_| {})?;
                }
            }
        }
        write_atomic(&dir.join(MANIFEST_FILE), &manifest_payload(&manifest))?;
        Ok(manifest)
    }
}

/// The payload bytes of a manifest as a bundle directory holds them:
/// pretty JSON and a final newline.
pub fn manifest_payload(manifest: &Manifest) -> Vec<u8> {
    let mut bytes =
        serde_json::to_vec_pretty(manifest).expect("manifests always serialize to JSON");
    bytes.push(b'\n');
    bytes
}

/// blake3 (hex) and size of a file, read in chunks; `progress` gets the
/// number of bytes of each chunk.
pub(crate) fn hash_file(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<(String, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size: u64 = 0;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        size += n as u64;
        progress(n as u64);
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp file in `dest`'s directory, named so that it cannot be
/// mistaken for a finished file (a leading dot, `.tmp`).
pub(crate) fn temp_beside(dest: &Path) -> Result<(PathBuf, File)> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    Ok((tmp, file))
}

/// Renames `tmp` over `dest` and fsyncs the directory, so the rename is
/// durable; removes `tmp` if that fails.
fn install(tmp: &Path, dest: &Path) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let result = fs::rename(tmp, dest)
        .map_err(|e| Error::io(dest, e))
        .and_then(|()| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(dir, e))
        });
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Temp file beside `dest`, write, fsync, rename: a reader sees the old
/// file or the whole new one.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let (tmp, mut file) = temp_beside(dest)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e));
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    install(&tmp, dest)
}

/// Copies `src` to `dest` through a temp file beside it, checking that the
/// copy is `size` bytes with blake3 `hash`; `progress` gets each chunk's
/// length. Nothing is left at `dest` (or in its temp file) on a mismatch.
pub(crate) fn copy_checked(
    src: &Path,
    dest: &Path,
    hash: &str,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut input = File::open(src).map_err(|e| Error::io(src, e))?;
    let (tmp, mut out) = temp_beside(dest)?;
    let result = (|| {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut copied: u64 = 0;
        loop {
            let n = input.read(&mut buf).map_err(|e| Error::io(src, e))?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > size {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            out.write_all(chunk).map_err(|e| Error::io(&tmp, e))?;
            progress(n as u64);
        }
        if copied != size {
            return Err(Error::SizeMismatch {
                what: src.display().to_string(),
                expected: size,
                actual: copied,
            });
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != hash {
            return Err(Error::HashMismatch {
                what: src.display().to_string(),
                expected: hash.to_owned(),
                actual,
            });
        }
        out.sync_all().map_err(|e| Error::io(&tmp, e))
    })();
    drop(out);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    install(&tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConfigRef {
        ConfigRef {
            edge: "config/edge.toml".into(),
            regions: Some("config/regions".into()),
        }
    }

    fn draft() -> Draft {
        let mut d = Draft::new("production", vec!["eu-central-1".into()], 7, config());
        d.add_bytes(
            "config/edge.toml",
            b"[routes]\n".to_vec(),
            "application/toml",
        )
        .expect("config");
        d
    }

    #[test]
    fn manifest_is_sorted_totalled_and_checked() {
        let mut d = draft();
        d.add_bytes("static/site/b.css", b"b{}".to_vec(), "text/css")
            .expect("b");
        d.add_bytes("static/site/a.html", b"<p>".to_vec(), "text/html")
            .expect("a");
        let m = d.manifest().expect("valid");
        let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "config/edge.toml",
                "static/site/a.html",
                "static/site/b.css"
            ]
        );
        assert_eq!(m.totals.files, 3);
        assert_eq!(m.totals.bytes, 9 + 3 + 3);
        assert_eq!(m.min_runtime, env!("CARGO_PKG_VERSION"));
        assert_eq!(m.expires.unix() - m.created.unix(), 90 * 24 * 3600);
        assert_eq!(
            m.file("static/site/b.css").map(|f| f.blake3.clone()),
            Some(blake3::hash(b"b{}").to_hex().to_string())
        );
    }

    #[test]
    fn paths_are_validated_and_never_repeated() {
        let mut d = draft();
        for bad in ["../x", "/abs", "a//b", "a\\b", "c:/x"] {
            assert!(
                matches!(
                    d.add_bytes(bad, vec![], "text/plain"),
                    Err(Error::InvalidPath { .. })
                ),
                "{bad}"
            );
        }
        let err = d
            .add_bytes("config/edge.toml", vec![], "text/plain")
            .expect_err("repeated");
        assert!(err.to_string().contains("added twice"), "{err}");
        // Paths that differ only in case pass one at a time, but not as a set.
        d.add_bytes("static/A.txt", vec![], "text/plain")
            .expect("A");
        d.add_bytes("static/a.txt", vec![], "text/plain")
            .expect("a");
        assert!(d.manifest().is_err());
    }

    #[test]
    fn settings_are_checked_by_manifest() {
        let mut d = draft();
        d.min_runtime("1.x");
        assert!(d.manifest().is_err());
        d.min_runtime("0.9.1");
        d.expires_after(Duration::from_secs(60));
        let m = d.manifest().expect("valid");
        assert_eq!(m.min_runtime, "0.9.1");
        assert_eq!(m.expires.unix() - m.created.unix(), 60);
        let no_config = Draft::new("production", vec!["eu-central-1".into()], 1, config());
        assert!(no_config.manifest().is_err(), "config.edge must be a file");
    }

    #[test]
    fn write_dir_writes_payload_and_blobs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("big.bin");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&src, &big).expect("src");
        let mut d = draft();
        d.add_file("modules/m.wasm", &src, "application/wasm")
            .expect("file");
        d.add_bytes("static/copy.bin", big.clone(), "application/octet-stream")
            .expect("same content");
        let out = tmp.path().join("bundle");
        let m = d.write_dir(&out).expect("written");
        let payload = fs::read(out.join(MANIFEST_FILE)).expect("manifest.json");
        assert_eq!(payload, manifest_payload(&m));
        let back: Manifest =
            crate::json::from_slice_strict(crate::envelope::DocKind::Manifest, &payload)
                .expect("parses strictly");
        assert_eq!(back, m);
        let blobs: Vec<_> = fs::read_dir(out.join("blobs"))
            .expect("blobs")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(blobs.len(), 2, "identical contents share a blob");
        let hash = blake3::hash(&big).to_hex().to_string();
        assert_eq!(fs::read(out.join("blobs").join(&hash)).expect("blob"), big);
        assert!(
            matches!(d.write_dir(&out), Err(Error::State { .. })),
            "never writes into a used directory"
        );
    }

    #[test]
    fn a_file_changed_after_it_was_added_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("a.wasm");
        fs::write(&src, b"one").expect("src");
        let mut d = draft();
        d.add_file("modules/a.wasm", &src, "application/wasm")
            .expect("file");
        fs::write(&src, b"two").expect("changed");
        let out = tmp.path().join("bundle");
        assert!(matches!(d.write_dir(&out), Err(Error::HashMismatch { .. })));
        fs::write(&src, b"three").expect("changed");
        let out2 = tmp.path().join("bundle2");
        assert!(matches!(
            d.write_dir(&out2),
            Err(Error::SizeMismatch { .. })
        ));
        let left: Vec<String> = fs::read_dir(out2.join("blobs"))
            .expect("blobs")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let config_blob = blake3::hash(b"[routes]\n").to_hex().to_string();
        assert_eq!(left, [config_blob], "no temp file or partial blob remains");
        assert!(!out2.join(MANIFEST_FILE).exists());
        assert!(
            d.add_file(
                "modules/b.wasm",
                &tmp.path().join("missing"),
                "application/wasm"
            )
            .is_err()
        );
    }
}
