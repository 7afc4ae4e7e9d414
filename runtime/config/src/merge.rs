//! Deep merge of a region overlay over the global edge config, recording which file set each key.
//!
//! Tables merge recursively; arrays and scalars replace whole. For every key
//! path the merge remembers the file that set it (its *provenance*), so an
//! error about `upstreams.origin.connect_timeout` names the overlay when the
//! overlay set it, and a relative path resolves against the directory of the
//! file it was written in. Lookups take the longest recorded prefix of a key,
//! so `routes.site.hosts[3]` is attributed like `routes.site.hosts`.

use std::collections::BTreeMap;

use toml::{Table, Value};

use crate::error::{FileInfo, Key};

/// For each dotted key path, the index of the file that set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Provenance(BTreeMap<Vec<String>, usize>);

impl Provenance {
    /// Records every key of `table`, recursively through tables, as set by `file`.
    pub(crate) fn record_table(&mut self, table: &Table, file: usize) {
        let mut path = Vec::new();
        self.record_in(table, &mut path, file);
    }

    fn record_in(&mut self, table: &Table, path: &mut Vec<String>, file: usize) {
        for (key, value) in table {
            path.push(key.clone());
            self.record_value(value, path, file);
            path.pop();
        }
    }

    fn record_value(&mut self, value: &Value, path: &mut Vec<String>, file: usize) {
        self.0.insert(path.clone(), file);
        if let Value::Table(table) = value {
            self.record_in(table, path, file);
        }
    }

    /// Forgets `path` and everything below it.
    fn forget(&mut self, path: &[String]) {
        self.0.retain(|key, _| !key.starts_with(path));
    }

    /// The file that set `names` or its longest recorded prefix.
    pub(crate) fn lookup(&self, names: &[String]) -> Option<usize> {
        (1..=names.len())
            .rev()
            .find_map(|len| names.get(..len).and_then(|prefix| self.0.get(prefix)))
            .copied()
    }
}

/// Merges `overlay` into `base`: tables recursively, anything else replaced,
/// recording `file` as the provenance of every key the overlay set.
pub(crate) fn merge(base: &mut Table, overlay: Table, file: usize, provenance: &mut Provenance) {
    let mut path = Vec::new();
    merge_in(base, overlay, &mut path, file, provenance);
}

fn merge_in(
    base: &mut Table,
    overlay: Table,
    path: &mut Vec<String>,
    file: usize,
    provenance: &mut Provenance,
) {
    for (key, value) in overlay {
        path.push(key.clone());
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(over)) => {
                merge_in(inner, over, path, file, provenance);
            }
            (existing, value) => {
                if existing.is_some() {
                    provenance.forget(path);
                }
                provenance.record_value(&value, path, file);
                base.insert(key, value);
            }
        }
        path.pop();
    }
}

/// The files a document was assembled from and which key came from which.
#[derive(Debug, Clone)]
pub(crate) struct Origins {
    /// File 0: the document itself (the global edge config, the bootstrap).
    main: FileInfo,
    /// File 1: the region overlay merged over it, if any.
    overlay: Option<FileInfo>,
    provenance: Provenance,
}

impl Origins {
    /// A document read from one file.
    pub(crate) fn single(file: FileInfo) -> Self {
        Origins {
            main: file,
            overlay: None,
            provenance: Provenance::default(),
        }
    }

    pub(crate) fn merged(
        main: FileInfo,
        overlay: Option<FileInfo>,
        provenance: Provenance,
    ) -> Self {
        Origins {
            main,
            overlay,
            provenance,
        }
    }

    /// The file `key` (or its longest recorded prefix) came from; the main
    /// file when nothing is recorded.
    pub(crate) fn file_of(&self, key: &Key) -> &FileInfo {
        match (self.provenance.lookup(&key.table_names()), &self.overlay) {
            (Some(OVERLAY), Some(overlay)) => overlay,
            _ => &self.main,
        }
    }
}

/// File index of the main document in [`Provenance`].
pub(crate) const MAIN: usize = 0;
/// File index of the overlay in [`Provenance`].
pub(crate) const OVERLAY: usize = 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// Merges `overlay` over `global` and checks the merged document and,
    /// for each `(key, file)`, that `key` is attributed to `file` (0 = global, 1 = overlay).
    fn check(global: &str, overlay: &str, merged: &str, attributions: &[(&str, usize)]) {
        let mut base: Table = global.parse().unwrap();
        let over: Table = overlay.parse().unwrap();
        let mut provenance = Provenance::default();
        provenance.record_table(&base, 0);
        merge(&mut base, over, 1, &mut provenance);
        let expected: Table = merged.parse().unwrap();
        assert_eq!(base, expected, "merged document");
        for (key, file) in attributions {
            let names: Vec<String> = key.split('.').map(str::to_owned).collect();
            assert_eq!(
                provenance.lookup(&names),
                Some(*file),
                "provenance of {key}"
            );
        }
    }

    #[test]
    fn merge_and_provenance() {
        // Scalars replace; untouched keys keep their file.
        check(
            "[upstreams.o]\ntargets = ['http://a']\nconnect_timeout = '2s'",
            "[upstreams.o]\nconnect_timeout = '5s'",
            "[upstreams.o]\ntargets = ['http://a']\nconnect_timeout = '5s'",
            &[
                ("upstreams.o.connect_timeout", 1),
                ("upstreams.o.targets", 0),
                ("upstreams.o", 0),
                ("upstreams", 0),
            ],
        );
        // Arrays replace whole; an index inside is attributed like the array.
        check(
            "[routes.r]\nhosts = ['a', 'b']",
            "[routes.r]\nhosts = ['c']",
            "[routes.r]\nhosts = ['c']",
            &[("routes.r.hosts", 1), ("routes.r", 0)],
        );
        // Tables merge recursively; new entries belong to the overlay,
        // including keys below them (longest prefix).
        check(
            "[routes.r.response_headers]\nx-a = '1'",
            "[routes.r.response_headers]\nx-b = '2'\n[routes.s]\npath = '/s'",
            "[routes.r.response_headers]\nx-a = '1'\nx-b = '2'\n[routes.s]\npath = '/s'",
            &[
                ("routes.r.response_headers.x-a", 0),
                ("routes.r.response_headers.x-b", 1),
                ("routes.s", 1),
                ("routes.s.path", 1),
                ("routes.s.path.deeper", 1),
                ("routes.s.missing", 1),
            ],
        );
        // A table replaced by a scalar forgets the global's keys below it.
        check(
            "[upstreams.o]\ntargets = ['http://a']",
            "upstreams = 5",
            "upstreams = 5",
            &[("upstreams", 1), ("upstreams.o.targets", 1)],
        );
        // A scalar replaced by a table: the overlay owns all of it.
        check(
            "routes = 'x'",
            "[routes.a]\npath = '/'",
            "[routes.a]\npath = '/'",
            &[("routes", 1), ("routes.a.path", 1)],
        );
        // A boolean replaces a table (`cache = false` over a cache table)
        // and forgets the global's keys below it...
        check(
            "[routes.r.cache]\nclass = 'api'",
            "[routes.r]\ncache = false",
            "[routes.r]\ncache = false",
            &[
                ("routes.r.cache", 1),
                ("routes.r.cache.class", 1),
                ("routes.r", 0),
            ],
        );
        // ...and a table replaces a boolean whole.
        check(
            "[routes.r]\ncache = false\npath = '/'",
            "[routes.r.cache]\nttl = '5m'",
            "[routes.r]\npath = '/'\n[routes.r.cache]\nttl = '5m'",
            &[
                ("routes.r.cache", 1),
                ("routes.r.cache.ttl", 1),
                ("routes.r.path", 0),
            ],
        );
        // A module's config merges key by key: overridden and added keys
        // belong to the overlay, the others stay global.
        check(
            "[modules.c]\npath = 'c.wasm'\n[modules.c.config]\nbanner = 'cookies'\nstrict = true",
            "[modules.c]\npath = 'c.wasm'\n[modules.c.config]\nbanner = 'gdpr'\nversion = 3",
            "[modules.c]\npath = 'c.wasm'\n[modules.c.config]\nbanner = 'gdpr'\nstrict = true\nversion = 3",
            &[
                ("modules.c.path", 1),
                ("modules.c.config.banner", 1),
                ("modules.c.config.version", 1),
                ("modules.c.config.strict", 0),
                ("modules.c.config", 0),
            ],
        );
        // Keys only in the global stay global.
        check("[a]\nb = 1", "", "[a]\nb = 1", &[("a.b", 0), ("a", 0)]);
    }

    #[test]
    fn lookup_of_unknown_top_level_is_none() {
        let provenance = Provenance::default();
        assert_eq!(provenance.lookup(&["nothing".to_owned()]), None);
        assert_eq!(provenance.lookup(&[]), None);
    }
}
