//! The signed documents' payloads: root, keyset, manifest and head, each
//! with the checks that need nothing but the document itself.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::DocKind;
use crate::error::{Error, Result};
use crate::keys::{PublicKey, check_hash_hex};
use crate::path::{PathLimits, validate_path, validate_paths};
use crate::time::Timestamp;

/// The manifest format this runtime reads.
pub const MANIFEST_FORMAT: u32 = 1;

fn malformed(doc: DocKind, reason: impl Into<String>) -> Error {
    Error::Malformed {
        doc,
        reason: reason.into(),
    }
}

/// The root of trust: the keys that sign keysets and the next root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub version: u64,
    pub threshold: usize,
    pub keys: Vec<PublicKey>,
    pub created: Timestamp,
}

impl Root {
    pub fn check(&self) -> Result<()> {
        check_keys(DocKind::Root, self.threshold, self.keys.iter())?;
        if self.version == 0 {
            return Err(malformed(DocKind::Root, "version must be at least 1"));
        }
        Ok(())
    }
}

/// The online signing keys, signed by the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyset {
    pub version: u64,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// Distinct keyset keys that must sign each manifest and head.
    pub threshold: usize,
    pub keys: Vec<KeysetKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetKey {
    pub key: PublicKey,
    /// A label for people ("release-2026q4"); unique in the keyset.
    pub name: String,
    pub expires: Timestamp,
}

impl Keyset {
    pub fn check(&self) -> Result<()> {
        let doc = DocKind::Keyset;
        check_keys(doc, self.threshold, self.keys.iter().map(|k| &k.key))?;
        let mut names = BTreeSet::new();
        for k in &self.keys {
            if k.name.is_empty() || k.name.len() > 64 || k.name.chars().any(char::is_control) {
                return Err(malformed(
                    doc,
                    format!("key name {:?} is not a label", k.name),
                ));
            }
            if !names.insert(k.name.as_str()) {
                return Err(malformed(doc, format!("key name {:?} is repeated", k.name)));
            }
        }
        if self.expires <= self.created {
            return Err(malformed(doc, "expires is not after created"));
        }
        Ok(())
    }

    pub fn key(&self, key: &PublicKey) -> Option<&KeysetKey> {
        self.keys.iter().find(|k| k.key == *key)
    }
}

fn check_keys<'a>(
    doc: DocKind,
    threshold: usize,
    keys: impl Iterator<Item = &'a PublicKey>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for k in keys {
        if !seen.insert(*k) {
            return Err(malformed(doc, format!("key {k} is listed twice")));
        }
    }
    if threshold == 0 || threshold > seen.len() {
        return Err(malformed(
            doc,
            format!(
                "threshold {threshold} must be between 1 and the number of keys ({})",
                seen.len()
            ),
        ));
    }
    Ok(())
}

/// Which bundles an edge accepts: its environment and region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub environment: String,
    pub region: String,
}

impl Scope {
    pub fn new(environment: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            environment: environment.into(),
            region: region.into(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.environment, self.region)
    }
}

/// Environment and region names: what an origin path segment may hold.
pub fn check_scope_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} must be 1-64 of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}

/// What a bundle contains and where it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub environment: String,
    pub regions: Vec<String>,
    pub version: u64,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// The oldest `cathedral` version that can run this bundle.
    pub min_runtime: String,
    pub config: ConfigRef,
    pub files: Vec<FileEntry>,
    pub totals: Totals,
}

/// Where the bundle's edge config is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRef {
    /// The edge config file.
    pub edge: String,
    /// The directory of `<region>.toml` overlays, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub blake3: String,
    pub size: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

impl Manifest {
    /// Everything that can be checked without trust state: format, names,
    /// paths, hashes, content types, totals and the size limit.
    pub fn check(&self, limits: &PathLimits, max_bytes: u64) -> Result<()> {
        let doc = DocKind::Manifest;
        if self.format != MANIFEST_FORMAT {
            return Err(malformed(
                doc,
                format!(
                    "format {} is not supported (this runtime reads {MANIFEST_FORMAT})",
                    self.format
                ),
            ));
        }
        check_scope_name("environment", &self.environment).map_err(|e| malformed(doc, e))?;
        if self.regions.is_empty() {
            return Err(malformed(doc, "regions is empty"));
        }
        let mut regions = BTreeSet::new();
        for r in &self.regions {
            check_scope_name("region", r).map_err(|e| malformed(doc, e))?;
            if !regions.insert(r) {
                return Err(malformed(doc, format!("region {r:?} is listed twice")));
            }
        }
        if self.version == 0 {
            return Err(malformed(doc, "version must be at least 1"));
        }
        if self.expires <= self.created {
            return Err(malformed(doc, "expires is not after created"));
        }
        parse_version(&self.min_runtime)
            .map_err(|e| malformed(doc, format!("min_runtime: {e}")))?;
        validate_paths(self.files.iter().map(|f| f.path.as_str()), limits)?;
        let mut bytes: u64 = 0;
        for f in &self.files {
            check_hash_hex(&f.blake3).map_err(|e| malformed(doc, format!("{}: {e}", f.path)))?;
            check_content_type(&f.content_type)
                .map_err(|e| malformed(doc, format!("{}: {e}", f.path)))?;
            bytes = bytes.saturating_add(f.size);
        }
        if self.totals.files != self.files.len() as u64 || self.totals.bytes != bytes {
            return Err(malformed(
                doc,
                format!(
                    "totals say {} files and {} bytes; the list has {} files and {bytes} bytes",
                    self.totals.files,
                    self.totals.bytes,
                    self.files.len()
                ),
            ));
        }
        if bytes > max_bytes {
            return Err(Error::Oversize {
                doc: format!("bundle {}", self.version),
                size: bytes,
                limit: max_bytes,
            });
        }
        validate_path(&self.config.edge, limits)?;
        if self.file(&self.config.edge).is_none() {
            return Err(malformed(
                doc,
                format!(
                    "config.edge {:?} is not a file of the bundle",
                    self.config.edge
                ),
            ));
        }
        if let Some(dir) = &self.config.regions {
            validate_path(dir, limits)?;
        }
        Ok(())
    }

    /// The file at `path`.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.files.get(i))
    }

    /// Whether some file lies under `dir/`.
    pub fn is_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        let i = self
            .files
            .partition_point(|f| f.path.as_str() < prefix.as_str());
        self.files
            .get(i)
            .is_some_and(|f| f.path.starts_with(&prefix))
    }

    /// The overlay for `region`, if the bundle carries one.
    pub fn region_overlay(&self, region: &str) -> Option<&FileEntry> {
        let dir = self.config.regions.as_ref()?;
        self.file(&format!("{dir}/{region}.toml"))
    }
}

/// Which manifest is current for one scope; short-lived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub environment: String,
    pub region: String,
    pub version: u64,
    /// blake3 of the manifest envelope's bytes.
    pub manifest: String,
    pub manifest_size: u64,
    pub issued: Timestamp,
    pub expires: Timestamp,
}

impl Head {
    pub fn check(&self) -> Result<()> {
        let doc = DocKind::Head;
        check_scope_name("environment", &self.environment).map_err(|e| malformed(doc, e))?;
        check_scope_name("region", &self.region).map_err(|e| malformed(doc, e))?;
        check_hash_hex(&self.manifest).map_err(|e| malformed(doc, format!("manifest: {e}")))?;
        if self.expires <= self.issued {
            return Err(malformed(doc, "expires is not after issued"));
        }
        Ok(())
    }

    pub fn scope(&self) -> Scope {
        Scope::new(&self.environment, &self.region)
    }

    /// [`Head::check`], and the head must be for `scope`.
    pub fn check_for(&self, scope: &Scope) -> Result<()> {
        self.check()?;
        if self.scope() != *scope {
            return Err(Error::WrongScope {
                doc: DocKind::Head,
                expected: scope.to_string(),
                got: self.scope().to_string(),
            });
        }
        Ok(())
    }
}

/// A content type as a header value may carry it.
fn check_content_type(ct: &str) -> Result<(), String> {
    if !ct.is_empty()
        && ct.len() <= 256
        && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
        && ct.contains('/')
    {
        Ok(())
    } else {
        Err(format!("content type {ct:?} is not a media type"))
    }
}

/// `major.minor.patch` as numbers.
pub fn parse_version(v: &str) -> Result<(u64, u64, u64), String> {
    let mut parts = v.split('.').map(|p| {
        if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            p.parse::<u64>().ok()
        }
    });
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) => Ok((a, b, c)),
        _ => Err(format!("{v:?} is not a version like 1.2.3")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            blake3: blake3::hash(path.as_bytes()).to_hex().to_string(),
            size,
            content_type: "text/plain".into(),
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        let bytes = files.iter().map(|f| f.size).sum();
        Manifest {
            format: 1,
            environment: "production".into(),
            regions: vec!["eu-central-1".into()],
            version: 3,
            created: Timestamp::from_unix(1_000),
            expires: Timestamp::from_unix(2_000),
            min_runtime: "0.1.0".into(),
            config: ConfigRef {
                edge: "config/edge.toml".into(),
                regions: Some("config/regions".into()),
            },
            totals: Totals {
                files: files.len() as u64,
                bytes,
            },
            files,
        }
    }

    fn good() -> Manifest {
        manifest(vec![
            entry("config/edge.toml", 10),
            entry("config/regions/eu-central-1.toml", 5),
            entry("site/index.html", 100),
        ])
    }

    #[test]
    fn a_good_manifest_passes_and_answers_lookups() {
        let m = good();
        m.check(&PathLimits::default(), 1 << 20).expect("valid");
        assert!(m.file("site/index.html").is_some());
        assert!(m.file("site").is_none());
        assert!(m.is_dir("site"));
        assert!(m.is_dir("config/regions"));
        assert!(!m.is_dir("sit"));
        assert!(m.region_overlay("eu-central-1").is_some());
        assert!(m.region_overlay("us-east-1").is_none());
    }

    #[test]
    fn manifest_problems_are_named() {
        let limits = PathLimits::default();
        let check = |mutate: &dyn Fn(&mut Manifest), expect: &str| {
            let mut m = good();
            mutate(&mut m);
            let err = m.check(&limits, 1 << 20).expect_err(expect);
            assert!(
                err.to_string().contains(expect),
                "{err} should mention {expect}"
            );
        };
        check(&|m| m.format = 2, "format 2");
        check(&|m| m.environment = "Prod".into(), "environment");
        check(&|m| m.regions.clear(), "regions is empty");
        check(&|m| m.regions.push("eu-central-1".into()), "listed twice");
        check(&|m| m.version = 0, "version");
        check(&|m| m.expires = m.created, "expires");
        check(&|m| m.min_runtime = "1.x".into(), "min_runtime");
        check(&|m| m.totals.bytes += 1, "totals");
        check(&|m| m.files.swap(0, 2), "sorted");
        check(&|m| m.files[0].blake3 = "xyz".into(), "blake3 hex");
        check(&|m| m.files[2].content_type = "html".into(), "media type");
        check(
            &|m| m.config.edge = "config/missing.toml".into(),
            "config.edge",
        );
        let mut big = good();
        big.files[2].size = 2 << 20;
        big.totals.bytes = big.files.iter().map(|f| f.size).sum();
        assert!(matches!(
            big.check(&limits, 1 << 20),
            Err(Error::Oversize { .. })
        ));
    }

    #[test]
    fn key_lists_and_thresholds_are_checked() {
        let a = crate::keys::SecretKey::from_seed([1; 32]).public();
        let b = crate::keys::SecretKey::from_seed([2; 32]).public();
        let root = |keys: Vec<PublicKey>, threshold| Root {
            version: 1,
            threshold,
            keys,
            created: Timestamp::from_unix(0),
        };
        assert!(root(vec![a, b], 2).check().is_ok());
        assert!(root(vec![a, b], 3).check().is_err());
        assert!(root(vec![a, b], 0).check().is_err());
        assert!(root(vec![a, a], 1).check().is_err(), "a key listed twice");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("0.1.0"), Ok((0, 1, 0)));
        assert_eq!(parse_version("10.20.30"), Ok((10, 20, 30)));
        for bad in ["1.2", "1.2.3.4", "a.b.c", "1..2", "+1.2.3", "1.2.3-rc1"] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }
}
