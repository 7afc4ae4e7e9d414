//! [`WasmEngine::check`]: does a component fit `filter` or `handler`, and if
//! not, which import or export is wrong (`cathedral module check`). Uses the
//! very linkers a load uses, so a module that checks clean loads.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::engine::{WasmEngine, export_names, import_names};
use crate::error::Result;
use crate::module::ModuleKind;

/// What [`WasmEngine::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The blake3 of the component, hex.
    pub hash: String,
    /// Its size in bytes.
    pub size: usize,
    /// Its imports (instance names such as `cathedral:edge/config@0.1.0`).
    pub imports: Vec<String>,
    /// Its exports.
    pub exports: Vec<String>,
    /// `Ok` if it fits the `filter` world, else why not.
    pub filter: Result<(), String>,
    /// `Ok` if it fits the `handler` world, else why not.
    pub handler: Result<(), String>,
}

impl CheckReport {
    /// The world it fits, if any (a filter takes precedence, but no real
    /// component fits both).
    pub fn kind(&self) -> Option<ModuleKind> {
        match (&self.filter, &self.handler) {
            (Ok(()), _) => Some(ModuleKind::Filter),
            (_, Ok(())) => Some(ModuleKind::Handler),
            _ => None,
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Some(ModuleKind::Filter) => writeln!(f, "ok: a filter (cathedral:edge/filter@0.1.0)")?,
            Some(ModuleKind::Handler) => writeln!(
                f,
                "ok: a handler (cathedral:edge/handler@0.1.0, wasi:http/proxy)"
            )?,
            None => {
                writeln!(f, "error: fits neither world")?;
                if let Err(why) = &self.filter {
                    writeln!(f, "  not a filter: {why}")?;
                }
                if let Err(why) = &self.handler {
                    writeln!(f, "  not a handler: {why}")?;
                }
            }
        }
        writeln!(f, "blake3: {}", self.hash)?;
        writeln!(f, "size: {} bytes", self.size)?;
        writeln!(f, "imports:")?;
        for import in &self.imports {
            writeln!(f, "  {import}")?;
        }
        writeln!(f, "exports:")?;
        for export in &self.exports {
            writeln!(f, "  {export}")?;
        }
        Ok(())
    }
}

/// Checks `bytes` against both worlds on a throwaway engine (no pooling, no
/// artifact cache): what `cathedral module check FILE.wasm` needs. Inside a
/// node, prefer [`WasmEngine::check`] on the node's engine.
///
/// # Errors
///
/// [`crate::Error::Engine`] if no engine can be built, [`crate::Error::Load`]
/// when `bytes` is not a valid component at all.
pub async fn check_component(bytes: impl Into<Bytes>) -> Result<CheckReport> {
    let engine = WasmEngine::new(crate::EngineConfig {
        pooling: None,
        ..crate::EngineConfig::default()
    })?;
    engine.check(bytes).await
}

impl WasmEngine {
    /// Checks `bytes` against both worlds without loading it for use.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Load`] when `bytes` is not a valid component at all.
    pub async fn check(&self, bytes: impl Into<Bytes>) -> Result<CheckReport> {
        let bytes = bytes.into();
        let hash = blake3::hash(&bytes);
        let size = bytes.len();
        let name: Arc<str> = Arc::from("check");
        let component = self.compile(&name, bytes, hash).await?;
        Ok(CheckReport {
            hash: hash.to_hex().to_string(),
            size,
            imports: import_names(self.engine(), &component),
            exports: export_names(self.engine(), &component),
            filter: self.link_filter(&component),
            handler: self.link_handler(&component),
        })
    }
}
