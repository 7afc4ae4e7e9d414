//! The compiled-artifact disk cache, so a restart does not recompile.
//!
//! Layout: `<root>/<engine>/<module>.cwasm`, where `<engine>` is the blake3
//! of the engine's compatibility hash (wasmtime version, target, compiler
//! settings, tunables: an artifact is only ever read by an engine that could
//! have written it) and `<module>` the blake3 of the component's bytes.
//!
//! Deserializing an artifact trusts its bytes completely (it is machine code),
//! so each file records the blake3 of its artifact, and a file is used only
//! when the artifact's bytes hash to it. Anything else — a truncated write,
//! a flipped bit, a file that was edited — is *rejected*: removed, counted,
//! and the module recompiled. Files are written to a temporary name, synced
//! and renamed into place, so a reader never sees a partial file.
//!
//! The recorded hash lives beside the artifact, so it detects corruption and
//! any tampering that does not also rewrite the header; the directory must
//! still be writable by the node's user only (as its docs say).
//!
//! File format (all integers little-endian):
//!
//! ```text
//! magic "CATHEDRAL-CWASM\n" (16 bytes) | format version u32 |
//! module blake3 (32) | artifact blake3 (32) | artifact length u64 | artifact
//! ```

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const MAGIC: &[u8; 16] = b"CATHEDRAL-CWASM\n";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16 + 4 + 32 + 32 + 8;

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A verified artifact.
    Hit(Vec<u8>),
    /// No file.
    Miss,
    /// A file that failed verification (now removed).
    Rejected(&'static str),
}

/// One engine's directory of artifacts.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// The cache for `engine` under `root`, creating its directory.
    pub(crate) fn new(root: &Path, engine: &wasmtime::Engine) -> io::Result<Self> {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hasher.0.finalize();
        let dir = root.join(format!("v{VERSION}-{}", &engine_hash.to_hex()[..32]));
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Where the artifact of `module` lives.
    pub(crate) fn path(&self, module: &blake3::Hash) -> PathBuf {
        self.dir.join(format!("{}.cwasm", module.to_hex()))
    }

    /// Reads and verifies the artifact of `module`.
    pub(crate) fn load(&self, module: &blake3::Hash) -> io::Result<Lookup> {
        let path = self.path(module);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => return Err(e),
        };
        match verify(&bytes, module) {
            Ok(()) => {
                let mut bytes = bytes;
                bytes.drain(..HEADER_LEN);
                Ok(Lookup::Hit(bytes))
            }
            Err(reason) => {
                self.remove(module);
                Ok(Lookup::Rejected(reason))
            }
        }
    }

    /// Removes the artifact of `module`, if any.
    pub(crate) fn remove(&self, module: &blake3::Hash) {
        // Best effort: a failure leaves a file that will be rejected again.
        let _ = fs::remove_file(self.path(module));
    }

    /// Writes the artifact of `module`: temporary file, fsync, rename.
    pub(crate) fn store(&self, module: &blake3::Hash, artifact: &[u8]) -> io::Result<()> {
        static UNIQUE: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            module.to_hex(),
            std::process::id(),
            UNIQUE.fetch_add(1, Relaxed)
        ));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&header(module, artifact))?;
            file.write_all(artifact)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, self.path(module))?;
            // Make the rename itself durable; not every platform can open a
            // directory, so this is best effort.
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn header(module: &blake3::Hash, artifact: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(module.as_bytes());
    h.extend_from_slice(blake3::hash(artifact).as_bytes());
    h.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
    h
}

/// Checks a cache file's header and its artifact's hash.
fn verify(bytes: &[u8], module: &blake3::Hash) -> Result<(), &'static str> {
    let Some((head, artifact)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err("shorter than its header");
    };
    let (magic, rest) = head.split_at(16);
    let (version, rest) = rest.split_at(4);
    let (recorded_module, rest) = rest.split_at(32);
    let (recorded_artifact, len) = rest.split_at(32);
    if magic != MAGIC {
        return Err("bad magic");
    }
    if version != VERSION.to_le_bytes() {
        return Err("unknown format version");
    }
    if recorded_module != module.as_bytes() {
        return Err("recorded for another module");
    }
    if len != (artifact.len() as u64).to_le_bytes() {
        return Err("length mismatch (truncated or extended)");
    }
    if blake3::hash(artifact).as_bytes() != recorded_artifact {
        return Err("artifact blake3 mismatch");
    }
    Ok(())
}

/// Feeds `Hash` output into blake3: a stable digest of wasmtime's
/// compatibility hash (std's `DefaultHasher` is not stable across Rust
/// releases).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_rejected() {
        let root = tempfile::tempdir().expect("tempdir");
        let engine = wasmtime::Engine::default();
        let cache = ArtifactCache::new(root.path(), &engine).expect("cache dir");
        let module = blake3::hash(b"module");
        let artifact = b"machine code".to_vec();
        assert!(matches!(cache.load(&module).expect("io"), Lookup::Miss));
        cache.store(&module, &artifact).expect("store");
        match cache.load(&module).expect("io") {
            Lookup::Hit(bytes) => assert_eq!(bytes, artifact),
            other => panic!("expected a hit, got {other:?}"),
        }

        #[track_caller]
        fn check(
            cache: &ArtifactCache,
            module: &blake3::Hash,
            edit: impl Fn(&mut Vec<u8>),
            why: &str,
        ) {
            cache.store(module, b"machine code").expect("store");
            let path = cache.path(module);
            let mut bytes = fs::read(&path).expect("read");
            edit(&mut bytes);
            fs::write(&path, &bytes).expect("write");
            match cache.load(module).expect("io") {
                Lookup::Rejected(reason) => assert_eq!(reason, why),
                other => panic!("expected {why:?}, got {other:?}"),
            }
            assert!(!path.exists(), "a rejected file is removed");
        }
        check(
            &cache,
            &module,
            |b| *b.last_mut().expect("non-empty") ^= 1,
            "artifact blake3 mismatch",
        );
        check(
            &cache,
            &module,
            |b| b.truncate(HEADER_LEN + 3),
            "length mismatch (truncated or extended)",
        );
        check(
            &cache,
            &module,
            |b| b.truncate(10),
            "shorter than its header",
        );
        check(&cache, &module, |b| b[0] = b'X', "bad magic");
        check(&cache, &module, |b| b[16] = 9, "unknown format version");
        check(
            &cache,
            &module,
            |b| b[20] ^= 1,
            "recorded for another module",
        );
        // No temporary files are left behind.
        let leftovers = fs::read_dir(&cache.dir)
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0);
    }
}
