//! Where an activation's files come from. An edge config names files —
//! Wasm components, static roots, CA bundles — by path; in local mode those
//! are paths on disk, in bundle mode they are paths inside a verified
//! bundle whose contents live in the content-addressed store. [`Files`]
//! resolves them either way, so `Active::build` does not care which.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use cathedral_config::EdgeConfig;

use crate::content::{ContentSource, DirectorySource};

/// Resolves the file references of one activation's edge config.
pub trait Files: Send + Sync + fmt::Debug {
    /// The whole content of a file the config names (a component, a CA
    /// file). Blocking: call it off the async threads.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The tree a static route serves.
    fn static_source(&self, root: &Path) -> io::Result<Arc<dyn ContentSource>>;
}

/// Paths are paths on this machine's filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl Files for LocalFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn static_source(&self, root: &Path) -> io::Result<Arc<dyn ContentSource>> {
        Ok(Arc::new(DirectorySource::new(root)?))
    }
}

/// What gets activated: a validated edge config, the files it refers to,
/// and a label for logs and `/readyz` (e.g. `bundle production/eu-central-1 v42`).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: EdgeConfig,
    pub files: Arc<dyn Files>,
    pub label: Option<String>,
}

impl Loaded {
    /// A config whose paths are local files.
    pub fn local(config: EdgeConfig) -> Self {
        Self {
            config,
            files: Arc::new(LocalFiles),
            label: None,
        }
    }
}

impl From<EdgeConfig> for Loaded {
    fn from(config: EdgeConfig) -> Self {
        Self::local(config)
    }
}
