//! `cathedral:edge/config`: the module's settings ([`ModuleConfig`]), fixed
//! per activation.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
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

    /// Every `(rest, value)` whose key is `prefix.rest`, sorted by key: a
    /// range query over the keys from `prefix.` on, so the cost grows with
    /// the matches, not with the config. A key equal to `prefix` is not a
    /// match, nor is a sibling such as `prefixx.a`.
    pub fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let dotted = format!("{prefix}.");
        let from = self
            .0
            .range::<str, _>((Bound::Included(dotted.as_str()), Bound::Unbounded));
        from.map_while(move |(k, v)| Some((k.strip_prefix(dotted.as_str())?, v.as_str())))
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

    fn under(&mut self, prefix: String) -> Vec<(String, String)> {
        self.call
            .settings
            .config
            .under(&prefix)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config every case reads: a table with nested keys, the prefix
    /// itself as a key, and siblings sorting just before and after
    /// `tiers.` (`-` and `/` are the bytes around `.`).
    fn config() -> ModuleConfig {
        [
            ("anonymous.policy", "anon"),
            ("tiers", "not a table"),
            ("tiers-old.a", "1"),
            ("tiers.free.keys", r#"["k1"]"#),
            ("tiers.free.policy", "api-free"),
            ("tiers.gold.eu.policy", "api-gold"),
            ("tiers/x", "2"),
            ("tiersx.a", "3"),
            ("zzz", "4"),
        ]
        .into_iter()
        .collect()
    }

    #[track_caller]
    fn check(prefix: &str, expected: &[(&str, &str)]) {
        let config = config();
        let got: Vec<(&str, &str)> = config.under(prefix).collect();
        assert_eq!(got, expected, "under({prefix:?})");
    }

    #[test]
    fn under_returns_the_prefix_table_only() {
        check(
            "tiers",
            &[
                ("free.keys", r#"["k1"]"#),
                ("free.policy", "api-free"),
                ("gold.eu.policy", "api-gold"),
            ],
        );
        check(
            "tiers.free",
            &[("keys", r#"["k1"]"#), ("policy", "api-free")],
        );
        check("tiers.gold", &[("eu.policy", "api-gold")]);
        check("anonymous", &[("policy", "anon")]);
        // A key equal to the prefix, and leaves, have no entries under them.
        check("tiers.free.policy", &[]);
        check("zzz", &[]);
        // Siblings that share the prefix's text are not under it.
        check("tiersx", &[("a", "3")]);
        check("tier", &[]);
        check("nothing", &[]);
        check("", &[]);
    }
}
