//! Configuration errors: every problem found, each with the file and key path it came from.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in the configuration.
///
/// Displays as `<file>: <key>: <message>`, or `<file>: <message>` when the
/// problem is not about one key (a file that cannot be read, a TOML syntax
/// error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the offending key came from, as given to the loader (paths
    /// the loader derives are shown relative to the current directory when
    /// they lie inside it). Pseudo-files such as `<built-in defaults>` or
    /// `<command line>` name values that came from no file.
    pub file: PathBuf,
    /// Dotted key path in TOML notation, e.g. `routes.api.upstream` or
    /// `listen[1].addr`; empty when the problem concerns the whole file.
    pub key: String,
    /// What was expected and what was found.
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, in the order they were found. Never empty.
///
/// Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// `None` when there is nothing to report.
    pub(crate) fn from_vec(errors: Vec<ConfigError>) -> Option<Self> {
        if errors.is_empty() {
            None
        } else {
            Some(ConfigErrors(errors))
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for errors returned by this crate; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `Result` with [`ConfigErrors`] as the default error.
pub type Result<T, E = ConfigErrors> = std::result::Result<T, E>;

/// A key path inside a TOML document: `routes.api.path`, `listen[0].addr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    Name(String),
    Index(usize),
}

impl Key {
    pub(crate) fn root() -> Key {
        Key(Vec::new())
    }

    pub(crate) fn field(&self, name: &str) -> Key {
        let mut segs = self.0.clone();
        segs.push(Seg::Name(name.to_owned()));
        Key(segs)
    }

    pub(crate) fn index(&self, index: usize) -> Key {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Key(segs)
    }

    pub(crate) fn push(&mut self, seg: Seg) {
        self.0.push(seg);
    }

    pub(crate) fn last_name(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Name(name)) => Some(name),
            _ => None,
        }
    }

    /// The leading table keys, up to the first array index: what provenance
    /// is recorded for (arrays are replaced whole, never merged).
    pub(crate) fn table_names(&self) -> Vec<String> {
        self.0
            .iter()
            .map_while(|seg| match seg {
                Seg::Name(name) => Some(name.clone()),
                Seg::Index(_) => None,
            })
            .collect()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Name(name) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(&toml_key(name))?;
                }
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A TOML key as written in a file: bare when it can be, quoted otherwise.
pub(crate) fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_owned()
    } else {
        toml_string(name)
    }
}

/// A TOML basic string literal on one line, quoted and escaped.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where a file's values came from, for error messages and relative paths.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    /// As shown in errors.
    pub name: PathBuf,
    /// Absolute directory that relative paths in the file resolve against.
    pub base_dir: PathBuf,
}

/// Collects errors while validating. Each error's file is looked up from
/// the key it is about, so overlay keys blame the overlay.
#[derive(Debug)]
pub(crate) struct Sink<'a> {
    origins: &'a crate::merge::Origins,
    files: &'a dyn crate::validate::FileTree,
    errors: Vec<ConfigError>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(origins: &'a crate::merge::Origins) -> Self {
        Self::with_files(origins, &crate::validate::LocalFiles)
    }

    /// A sink whose file references are checked against `files`.
    pub(crate) fn with_files(
        origins: &'a crate::merge::Origins,
        files: &'a dyn crate::validate::FileTree,
    ) -> Self {
        Sink {
            origins,
            files,
            errors: Vec::new(),
        }
    }

    /// Where file references in this document must point.
    pub(crate) fn files(&self) -> &'a dyn crate::validate::FileTree {
        self.files
    }

    pub(crate) fn push(&mut self, key: &Key, message: impl Into<String>) {
        let file = self.origins.file_of(key).name.clone();
        self.errors
            .push(ConfigError::new(file, key.to_string(), message));
    }

    /// An error about `key` (often a missing one) caused by the value at
    /// `cause`: the file that set `cause` is named.
    pub(crate) fn push_caused_by(&mut self, key: &Key, cause: &Key, message: impl Into<String>) {
        let file = self.origins.file_of(cause).name.clone();
        self.errors
            .push(ConfigError::new(file, key.to_string(), message));
    }

    /// The file `cause` came from when that is not the file of `key`: an
    /// error about `key` brought about by the value at `cause` names both.
    pub(crate) fn other_file(&self, key: &Key, cause: &Key) -> Option<String> {
        let file = &self.origins.file_of(cause).name;
        (*file != self.origins.file_of(key).name).then(|| file.display().to_string())
    }

    /// The directory relative paths set at `key` resolve against.
    pub(crate) fn base_dir(&self, key: &Key) -> &'a Path {
        &self.origins.file_of(key).base_dir
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_empty_key() {
        let with_key = ConfigError::new("a.toml", "routes.x.path", "required");
        let without = ConfigError::new("a.toml", "", "cannot read file");
        assert_eq!(with_key.to_string(), "a.toml: routes.x.path: required");
        assert_eq!(without.to_string(), "a.toml: cannot read file");
        let both = ConfigErrors(vec![with_key, without]);
        assert_eq!(
            both.to_string(),
            "a.toml: routes.x.path: required\na.toml: cannot read file"
        );
    }

    #[test]
    fn strings_are_quoted_on_one_line() {
        for (input, expected) in [
            ("plain", r#""plain""#),
            ("a \"quote\"", r#""a \"quote\"""#),
            ("back\\slash", r#""back\\slash""#),
            ("line\nbreak\ttab\r", r#""line\nbreak\ttab\r""#),
            ("bell\u{7}", r#""bell\u0007""#),
            ("ünïcödé", r#""ünïcödé""#),
        ] {
            assert_eq!(toml_string(input), expected);
            let parsed: toml::Value =
                toml::from_str::<toml::Table>(&format!("v = {expected}")).unwrap()["v"].clone();
            assert_eq!(parsed.as_str(), Some(input), "{expected} parses back");
        }
    }

    #[test]
    fn key_display_quotes_when_needed() {
        let key = Key::root()
            .field("routes")
            .field("a.b")
            .field("hosts")
            .index(2);
        assert_eq!(key.to_string(), r#"routes."a.b".hosts[2]"#);
        assert_eq!(key.table_names(), ["routes", "a.b", "hosts"]);
    }
}
