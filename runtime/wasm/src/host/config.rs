//! `cathedral:edge/config`: the module's settings ([`ModuleConfig`]), fixed
//! per activation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::host::bindings::cathedral::edge::config;
use crate::state::StoreState;

/// A module's config: string keys to string values (see `wit/host.wit` for
/// how the node flattens TOML into it). Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ModuleConfig(Arc<BTreeMap<String, String>>);

impl ModuleConfig {
    /// A config from a map.
    pub fn new(entries: BTreeMap<String, String>) -> Self {
        Self(Arc::new(entries))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every entry, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ModuleConfig {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Debug for ModuleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: values may be secrets.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl config::Host for StoreState {
    fn get(&mut self, key: String) -> Option<String> {
        self.call.settings.config.get(&key).map(str::to_owned)
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.call
            .settings
            .config
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}
