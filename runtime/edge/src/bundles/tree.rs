//! A verified bundle seen as files: the edge config's references resolve
//! to manifest entries, and their bytes come from the content-addressed
//! store, checked against their blake3 as they are read. Bundle paths never
//! become filesystem paths.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cathedral_bundle::{FileEntry, Manifest, Store};

use crate::content::{BoxFuture, ContentData, ContentObject, ContentSource, INLINE_LIMIT, Lookup};
use crate::files::Files;

/// One bundle's files.
#[derive(Debug, Clone)]
pub struct BundleTree {
    manifest: Arc<Manifest>,
    store: Arc<Store>,
}

impl BundleTree {
    pub fn new(manifest: Arc<Manifest>, store: Arc<Store>) -> Self {
        Self { manifest, store }
    }

    /// The manifest entry an absolute config path (`/modules/x.wasm`)
    /// names.
    fn entry(&self, path: &Path) -> Option<&FileEntry> {
        self.manifest.file(bundle_path(path)?)
    }

    fn read_entry(&self, entry: &FileEntry) -> io::Result<Vec<u8>> {
        self.store
            .read_blob(&entry.blake3, entry.size)
            .map_err(io::Error::other)
    }
}

/// The bundle path of an absolute config path: `/site/a.css` → `site/a.css`.
fn bundle_path(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix('/')
}

impl Files for BundleTree {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let entry = self.entry(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a file of the bundle", path.display()),
            )
        })?;
        self.read_entry(entry)
    }

    fn static_source(&self, root: &Path) -> io::Result<Arc<dyn ContentSource>> {
        let prefix = bundle_path(root)
            .filter(|p| self.manifest.is_dir(p))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is not a directory of the bundle", root.display()),
                )
            })?;
        Ok(Arc::new(BundleContent {
            tree: self.clone(),
            prefix: format!("{prefix}/"),
        }))
    }
}

impl cathedral_config::FileTree for BundleTree {
    fn check_file(&self, path: &Path) -> Result<(), String> {
        match self.entry(path) {
            Some(_) => Ok(()),
            None => Err(format!("{} is not a file of the bundle", path.display())),
        }
    }

    fn check_dir(&self, path: &Path) -> Result<(), String> {
        match bundle_path(path) {
            Some(p) if self.manifest.is_dir(p) => Ok(()),
            _ => Err(format!(
                "{} is not a directory of the bundle",
                path.display()
            )),
        }
    }
}

/// A static route's view of one bundle directory.
#[derive(Debug)]
struct BundleContent {
    tree: BundleTree,
    /// `site/` — ends in `/`.
    prefix: String,
}

impl ContentSource for BundleContent {
    fn open<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Lookup>> {
        Box::pin(async move {
            let full = format!("{}{}", self.prefix, path.trim_end_matches('/'));
            let manifest = &self.tree.manifest;
            let Some(entry) = manifest.file(&full).cloned() else {
                return Ok(if manifest.is_dir(&full) {
                    Lookup::Directory
                } else {
                    Lookup::NotFound
                });
            };
            let hash = blake3::Hash::from_hex(&entry.blake3).map_err(io::Error::other)?;
            let data = if entry.size <= INLINE_LIMIT {
                // Small files are read whole and checked against their hash
                // on every open.
                let tree = self.tree.clone();
                let e = entry.clone();
                let bytes = tokio::task::spawn_blocking(move || tree.read_entry(&e))
                    .await
                    .map_err(io::Error::other)??;
                ContentData::Bytes(Bytes::from(bytes))
            } else {
                // Large ones were verified when staged and when the node
                // started; they stream from the store.
                let path = self
                    .tree
                    .store
                    .blob_path(&entry.blake3)
                    .map_err(io::Error::other)?;
                ContentData::File(tokio::fs::File::open(path).await?)
            };
            Ok(Lookup::File(ContentObject {
                len: entry.size,
                modified: Some(manifest.created.to_system()),
                hash,
                content_type: Some(entry.content_type.clone()),
                data,
            }))
        })
    }
}
