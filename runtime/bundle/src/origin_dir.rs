//! Writing an origin directory in the layout of `docs/bundles.md`:
//!
//! ```text
//! root/<n>.json                      root documents
//! keyset.json, keysets/<n>.json      the current keyset, and every version
//! heads/<environment>/<region>.json  the current manifest per scope
//! manifests/<blake3>.json            manifest envelopes, immutable
//! blobs/<blake3>                     file contents, immutable
//! ```
//!
//! Every write goes to a temp file in the destination's directory (a
//! dot-file), is fsynced and renamed into place, and the directory is
//! fsynced: a file server reading the directory never sees a partial file.
//! Each document is parsed (not verified: signing keys are not known here)
//! before it is written, so a root cannot land where a keyset belongs, and
//! immutable documents are never replaced by different ones.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::documents::{Head, Keyset, Manifest, Root, Scope, check_scope_name};
use crate::draft::{copy_checked, write_atomic};
use crate::envelope::{DocKind, Envelope};
use crate::error::{Error, Result};
use crate::json::from_slice_strict;
use crate::keys::check_hash_hex;
use crate::trust::{MAX_SMALL_DOC, ManifestLimits};

/// An origin directory.
#[derive(Debug, Clone)]
pub struct OriginDir {
    root: PathBuf,
}

const SUBDIRS: [&str; 5] = ["root", "keysets", "heads", "manifests", "blobs"];

impl OriginDir {
    /// Opens the origin at `root`, creating it and its subdirectories.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in SUBDIRS {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Opens an origin that must already exist, creating nothing (for
    /// readers: a mistyped path is an error, not a new empty origin).
    pub fn existing(root: &Path) -> Result<Self> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(Self {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(Error::io(
                root,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            )),
            Err(e) => Err(Error::io(root, e)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/<version>.json`.
    pub fn root_path(&self, version: u64) -> PathBuf {
        self.root.join("root").join(format!("{version}.json"))
    }

    /// `keyset.json`.
    pub fn keyset_path(&self) -> PathBuf {
        self.root.join("keyset.json")
    }

    /// `heads/<environment>/<region>.json`; the names are checked, since
    /// they become path segments.
    pub fn head_path(&self, scope: &Scope) -> Result<PathBuf> {
        let malformed = |reason| Error::Malformed {
            doc: DocKind::Head,
            reason,
        };
        check_scope_name("environment", &scope.environment).map_err(malformed)?;
        check_scope_name("region", &scope.region).map_err(malformed)?;
        Ok(self
            .root
            .join("heads")
            .join(&scope.environment)
            .join(format!("{}.json", scope.region)))
    }

    /// `manifests/<hash>.json`.
    pub fn manifest_path(&self, hash: &str) -> Result<PathBuf> {
        check_hash_hex(hash).map_err(|reason| Error::Malformed {
            doc: DocKind::Manifest,
            reason,
        })?;
        Ok(self.root.join("manifests").join(format!("{hash}.json")))
    }

    /// `blobs/<hash>`.
    pub fn blob_path(&self, hash: &str) -> Result<PathBuf> {
        check_hash_hex(hash).map_err(|reason| Error::State {
            path: self.root.join("blobs"),
            reason,
        })?;
        Ok(self.root.join("blobs").join(hash))
    }

    /// Writes `root/<version>.json`. The envelope must hold a root of that
    /// version; an existing root of that version may only be replaced by
    /// one with the same payload (more signatures).
    pub fn put_root(&self, version: u64, envelope: &[u8]) -> Result<()> {
        let env = Envelope::parse(envelope, DocKind::Root, MAX_SMALL_DOC)?;
        let root: Root = from_slice_strict(DocKind::Root, &env.payload)?;
        root.check()?;
        check_version(DocKind::Root, root.version, version)?;
        let dest = self.root_path(version);
        same_payload_or_absent(&dest, DocKind::Root, &env.payload)?;
        write_atomic(&dest, envelope)
    }

    /// Writes `keysets/<version>.json` and then `keyset.json`. Refuses a
    /// version below one already published, and a version already
    /// published with another payload (edges would refuse both).
    pub fn put_keyset(&self, version: u64, envelope: &[u8]) -> Result<()> {
        let env = Envelope::parse(envelope, DocKind::Keyset, MAX_SMALL_DOC)?;
        let ks: Keyset = from_slice_strict(DocKind::Keyset, &env.payload)?;
        ks.check()?;
        check_version(DocKind::Keyset, ks.version, version)?;
        if let Some(highest) = self.highest_keyset()?
            && highest > version
        {
            return Err(Error::Rollback {
                doc: DocKind::Keyset,
                scope: String::new(),
                version,
                highest,
            });
        }
        let archived = self.root.join("keysets").join(format!("{version}.json"));
        same_payload_or_absent(&archived, DocKind::Keyset, &env.payload)?;
        write_atomic(&archived, envelope)?;
        write_atomic(&self.keyset_path(), envelope)
    }

    /// The highest version in `keysets/`.
    fn highest_keyset(&self) -> Result<Option<u64>> {
        let dir = self.root.join("keysets");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut highest = None;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(v) = version {
                highest = highest.max(Some(v));
            }
        }
        Ok(highest)
    }

    /// Writes `manifests/<blake3 of envelope>.json` and returns the hash.
    pub fn put_manifest(&self, envelope: &[u8]) -> Result<String> {
        let limits = ManifestLimits::default();
        let env = Envelope::parse(envelope, DocKind::Manifest, limits.max_manifest)?;
        let _: Manifest = from_slice_strict(DocKind::Manifest, &env.payload)?;
        let hash = blake3::hash(envelope).to_hex().to_string();
        let dest = self.manifest_path(&hash)?;
        if !fs::metadata(&dest).is_ok_and(|m| m.len() == envelope.len() as u64) {
            write_atomic(&dest, envelope)?;
        }
        Ok(hash)
    }

    /// Whether `blobs/<hash>` is present with `size` bytes (its content is
    /// checked when it is written).
    pub fn has_blob(&self, hash: &str, size: u64) -> bool {
        self.blob_path(hash)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Writes `blobs/<hash>` from memory; `bytes` must hash to `hash`.
    pub fn put_blob_bytes(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        let dest = self.blob_path(hash)?;
        let actual = blake3::hash(bytes).to_hex().to_string();
        if actual != hash {
            return Err(Error::HashMismatch {
                what: dest.display().to_string(),
                expected: hash.to_owned(),
                actual,
            });
        }
        write_atomic(&dest, bytes)
    }

    /// Copies `src` to `blobs/<hash>` by streaming; the copy must be `size`
    /// bytes hashing to `hash`. `progress` gets the length of each chunk
    /// copied.
    pub fn put_blob_file(
        &self,
        hash: &str,
        size: u64,
        src: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let dest = self.blob_path(hash)?;
        copy_checked(src, &dest, hash, size, progress)
    }

    /// Writes `heads/<environment>/<region>.json`; the envelope must hold a
    /// head for `scope`.
    pub fn put_head(&self, scope: &Scope, envelope: &[u8]) -> Result<()> {
        let dest = self.head_path(scope)?;
        let env = Envelope::parse(envelope, DocKind::Head, MAX_SMALL_DOC)?;
        let head: Head = from_slice_strict(DocKind::Head, &env.payload)?;
        head.check_for(scope)?;
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic(&dest, envelope)
    }
}

fn check_version(doc: DocKind, inside: u64, given: u64) -> Result<()> {
    if inside == given {
        Ok(())
    } else {
        Err(Error::Malformed {
            doc,
            reason: format!("the document is version {inside}, not {given}"),
        })
    }
}

/// An immutable document at `dest` may be rewritten only with the same
/// payload (its signatures may differ).
fn same_payload_or_absent(dest: &Path, doc: DocKind, payload: &[u8]) -> Result<()> {
    let existing = match fs::read(dest) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dest, e)),
    };
    let same =
        Envelope::parse(&existing, doc, MAX_SMALL_DOC).is_ok_and(|old| old.payload == payload);
    if same {
        Ok(())
    } else {
        Err(Error::State {
            path: dest.to_path_buf(),
            reason: format!(
                "already holds a different {doc} of this version; published {doc}s are never replaced (publish a higher version)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::documents::KeysetKey;
    use crate::keys::SecretKey;
    use crate::time::Timestamp;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn signed<T: Serialize>(kind: DocKind, doc: &T, signers: &[&SecretKey]) -> Vec<u8> {
        let mut env = Envelope::new(kind, serde_json::to_vec(doc).expect("serializes"));
        for k in signers {
            env.sign(k);
        }
        env.to_bytes()
    }

    fn root(version: u64) -> Root {
        Root {
            version,
            threshold: 1,
            keys: vec![key(1).public()],
            created: Timestamp::from_unix(1_000),
        }
    }

    fn keyset(version: u64, name: &str) -> Keyset {
        Keyset {
            version,
            created: Timestamp::from_unix(1_000),
            expires: Timestamp::from_unix(2_000),
            threshold: 1,
            keys: vec![KeysetKey {
                key: key(10).public(),
                name: name.into(),
                expires: Timestamp::from_unix(2_000),
            }],
        }
    }

    fn head(region: &str) -> Head {
        Head {
            environment: "production".into(),
            region: region.into(),
            version: 3,
            manifest: blake3::hash(b"m").to_hex().to_string(),
            manifest_size: 1,
            issued: Timestamp::from_unix(1_000),
            expires: Timestamp::from_unix(2_000),
        }
    }

    /// The files under `dir`, relative, sorted; temp files included.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).expect("under dir");
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn writes_the_documented_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let origin = OriginDir::open(&tmp.path().join("origin")).expect("open");
        for sub in SUBDIRS {
            assert!(origin.root().join(sub).is_dir(), "{sub}");
        }
        origin
            .put_root(1, &signed(DocKind::Root, &root(1), &[&key(1)]))
            .expect("root");
        origin
            .put_keyset(1, &signed(DocKind::Keyset, &keyset(1, "a"), &[&key(1)]))
            .expect("keyset");
        let manifest = b"{\"payloadType\":\"application/vnd.cathedral.manifest+json\",\"payload\":\"\",\"signatures\":[]}";
        // An empty payload is not a manifest.
        assert!(origin.put_manifest(manifest).is_err());
        let blob = b"hello";
        let hash = blake3::hash(blob).to_hex().to_string();
        origin.put_blob_bytes(&hash, blob).expect("blob");
        assert!(origin.has_blob(&hash, 5));
        assert!(!origin.has_blob(&hash, 6));
        let scope = Scope::new("production", "eu-central-1");
        origin
            .put_head(
                &scope,
                &signed(DocKind::Head, &head("eu-central-1"), &[&key(10)]),
            )
            .expect("head");
        assert_eq!(
            listing(origin.root()),
            [
                format!("blobs/{hash}"),
                "heads/production/eu-central-1.json".to_owned(),
                "keyset.json".to_owned(),
                "keysets/1.json".to_owned(),
                "root/1.json".to_owned(),
            ]
        );
    }

    #[test]
    fn manifests_are_named_by_their_hash() {
        use crate::documents::{ConfigRef, FileEntry, Totals};
        let tmp = tempfile::tempdir().expect("tempdir");
        let origin = OriginDir::open(tmp.path()).expect("open");
        let m = Manifest {
            format: 1,
            environment: "production".into(),
            regions: vec!["eu-central-1".into()],
            version: 3,
            created: Timestamp::from_unix(1_000),
            expires: Timestamp::from_unix(2_000),
            min_runtime: "0.1.0".into(),
            config: ConfigRef {
                edge: "config/edge.toml".into(),
                regions: None,
            },
            files: vec![FileEntry {
                path: "config/edge.toml".into(),
                blake3: blake3::hash(b"").to_hex().to_string(),
                size: 0,
                content_type: "application/toml".into(),
            }],
            totals: Totals { files: 1, bytes: 0 },
        };
        let env = signed(DocKind::Manifest, &m, &[&key(10)]);
        let hash = origin.put_manifest(&env).expect("manifest");
        assert_eq!(hash, blake3::hash(&env).to_hex().to_string());
        assert_eq!(
            fs::read(origin.manifest_path(&hash).expect("path")).expect("read"),
            env
        );
        assert_eq!(
            origin.put_manifest(&env).expect("again"),
            hash,
            "idempotent"
        );
    }

    #[test]
    fn documents_go_only_where_they_belong() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let origin = OriginDir::open(tmp.path()).expect("open");
        let r1 = signed(DocKind::Root, &root(1), &[&key(1)]);
        assert!(origin.put_keyset(1, &r1).is_err(), "a root is not a keyset");
        assert!(origin.put_root(2, &r1).is_err(), "the version must match");
        origin.put_root(1, &r1).expect("v1");
        origin
            .put_root(1, &signed(DocKind::Root, &root(1), &[&key(1), &key(2)]))
            .expect("same payload, more signatures");
        let mut other = root(1);
        other.keys = vec![key(3).public()];
        let err = origin
            .put_root(1, &signed(DocKind::Root, &other, &[&key(3)]))
            .expect_err("a different root 1");
        assert!(err.to_string().contains("never replaced"), "{err}");

        let scope = Scope::new("production", "eu-central-1");
        let elsewhere = signed(DocKind::Head, &head("us-east-1"), &[&key(10)]);
        assert!(matches!(
            origin.put_head(&scope, &elsewhere),
            Err(Error::WrongScope { .. })
        ));
        assert!(
            origin.put_head(&Scope::new("..", "x"), &elsewhere).is_err(),
            "scope names become path segments"
        );
    }

    #[test]
    fn keysets_only_move_forward() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let origin = OriginDir::open(tmp.path()).expect("open");
        let ks = |v, name: &str| signed(DocKind::Keyset, &keyset(v, name), &[&key(1)]);
        origin.put_keyset(2, &ks(2, "a")).expect("v2");
        assert!(matches!(
            origin.put_keyset(1, &ks(1, "a")),
            Err(Error::Rollback { .. })
        ));
        assert!(origin.put_keyset(2, &ks(2, "b")).is_err(), "a fork of v2");
        origin.put_keyset(3, &ks(3, "b")).expect("v3");
        assert_eq!(
            fs::read(origin.keyset_path()).expect("keyset.json"),
            ks(3, "b")
        );
        assert!(tmp.path().join("keysets/2.json").is_file());
    }

    #[test]
    fn blobs_are_checked_and_never_partial() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let origin = OriginDir::open(&tmp.path().join("o")).expect("open");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let src = tmp.path().join("src.bin");
        fs::write(&src, &data).expect("src");
        let hash = blake3::hash(&data).to_hex().to_string();
        let wrong = blake3::hash(b"x").to_hex().to_string();
        assert!(matches!(
            origin.put_blob_bytes(&wrong, &data),
            Err(Error::HashMismatch { .. })
        ));
        assert!(origin.put_blob_bytes("../etc", b"x").is_err());
        assert!(matches!(
            origin.put_blob_file(&wrong, data.len() as u64, &src, &mut |_| {}),
            Err(Error::HashMismatch { .. })
        ));
        assert!(matches!(
            origin.put_blob_file(&hash, 10, &src, &mut |_| {}),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(
            listing(&origin.root().join("blobs")).is_empty(),
            "nothing left behind"
        );
        let mut reported = 0;
        origin
            .put_blob_file(&hash, data.len() as u64, &src, &mut |n| reported += n)
            .expect("copied");
        assert_eq!(reported, data.len() as u64);
        assert_eq!(
            fs::read(origin.blob_path(&hash).expect("path")).expect("blob"),
            data
        );
    }

    #[test]
    fn existing_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(OriginDir::existing(&tmp.path().join("typo")).is_err());
        assert!(!tmp.path().join("typo").exists());
        assert!(OriginDir::existing(tmp.path()).is_ok());
    }
}
