//! Bundle path rules (`docs/bundles.md`, "Paths"): paths are validated,
//! never cleaned, one at a time and as the set of a manifest's files.
//!
//! Bundle paths never become filesystem paths (blobs are stored and served
//! by hash), but authors build bundles from directories and tools unpack
//! them, so a path must mean one thing everywhere: no traversal, no
//! separators or device names that some platform reads differently, and no
//! two paths that a case-insensitive or normalizing filesystem would merge.

use std::cmp::Ordering;
use std::collections::HashMap;

use unicode_normalization::{UnicodeNormalization, is_nfc};

use crate::error::{Error, Result};

/// Limits on bundle paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathLimits {
    /// Longest path, in bytes of UTF-8.
    pub max_len: usize,
    /// Most `/`-separated segments in a path.
    pub max_depth: usize,
    /// Most paths in one set (files in one bundle).
    pub max_files: usize,
}

impl Default for PathLimits {
    fn default() -> Self {
        Self {
            max_len: 512,
            max_depth: 16,
            max_files: 100_000,
        }
    }
}

/// Checks one bundle path: 1 to `max_len` bytes of UTF-8 in NFC, made of
/// at most `max_depth` `/`-separated segments, none of them empty, `.` or
/// `..`, with no leading or trailing `/`, no `\`, `:` or control character,
/// and no segment that Windows reserves (a device name such as `CON` or
/// `com1.txt`, or a name ending in `.` or space).
pub fn validate_path(path: &str, limits: &PathLimits) -> Result<()> {
    check_path(path, limits).map_err(|reason| invalid(path, reason))
}

/// Checks the paths of one bundle, given in the manifest's order: each is
/// valid ([`validate_path`]); they are strictly increasing in byte order
/// (so unique); no two are equal after case folding; no path is both a file
/// and a directory holding another (`a/b` and `a/b/c`, also when they
/// differ only in case); and there are at most `max_files` of them.
///
/// Reports the first problem, on the later path of a pair, naming the other.
pub fn validate_paths<'a>(
    paths: impl IntoIterator<Item = &'a str>,
    limits: &PathLimits,
) -> Result<()> {
    let mut prev: Option<&str> = None;
    let mut count = 0usize;
    // Folded path -> the path that claimed it, as a file or as a directory.
    let mut files: HashMap<String, &str> = HashMap::new();
    let mut dirs: HashMap<String, &str> = HashMap::new();
    for path in paths {
        count += 1;
        if count > limits.max_files {
            return Err(invalid(
                path,
                format!(
                    "is path number {count}, more than the limit of {} files",
                    limits.max_files
                ),
            ));
        }
        validate_path(path, limits)?;
        if let Some(prev) = prev {
            match prev.cmp(path) {
                Ordering::Less => {}
                Ordering::Equal => return Err(invalid(path, "is listed twice".to_owned())),
                Ordering::Greater => {
                    return Err(invalid(
                        path,
                        format!(
                            "is not sorted: it sorts before {prev:?}, which is listed ahead of it (paths are in byte order)"
                        ),
                    ));
                }
            }
        }
        prev = Some(path);

        let folded = fold(path);
        if let Some(other) = files.get(&folded) {
            return Err(invalid(
                path,
                format!("equals {other:?} after case folding"),
            ));
        }
        if let Some(other) = dirs.get(&folded) {
            return Err(invalid(
                path,
                format!(
                    "is a file, but {other:?} makes it a directory{}",
                    case_note(path, other)
                ),
            ));
        }
        let mut ancestors = Vec::new();
        for (end, _) in path.match_indices('/') {
            let dir = &path[..end];
            let folded_dir = fold(dir);
            if let Some(other) = files.get(&folded_dir) {
                return Err(invalid(
                    path,
                    format!(
                        "is inside {dir:?}, but {other:?} is a file{}",
                        case_note(dir, other)
                    ),
                ));
            }
            ancestors.push(folded_dir);
        }
        for dir in ancestors {
            dirs.entry(dir).or_insert(path);
        }
        files.insert(folded, path);
    }
    Ok(())
}

fn invalid(path: &str, reason: String) -> Error {
    Error::InvalidPath {
        path: path.to_owned(),
        reason,
    }
}

fn case_note(a: &str, b: &str) -> &'static str {
    if b.starts_with(a) {
        ""
    } else {
        " (they differ only in case)"
    }
}

/// The form two paths share if a case-insensitive filesystem would merge
/// them: lowercase, then NFC again (lowercasing can decompose).
fn fold(path: &str) -> String {
    path.to_lowercase().nfc().collect()
}

fn check_path(path: &str, limits: &PathLimits) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("is empty".to_owned());
    }
    if path.len() > limits.max_len {
        return Err(format!(
            "is {} bytes, more than the limit of {}",
            path.len(),
            limits.max_len
        ));
    }
    if let Some((at, c)) = path.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "contains control character U+{:04X} at byte {at}",
            u32::from(c)
        ));
    }
    if let Some(at) = path.find('\\') {
        return Err(format!("contains \"\\\" at byte {at}"));
    }
    if let Some(at) = path.find(':') {
        return Err(format!("contains \":\" at byte {at}"));
    }
    if !is_nfc(path) {
        return Err("is not in Unicode NFC".to_owned());
    }
    if path.starts_with('/') {
        return Err("starts with \"/\"".to_owned());
    }
    if path.ends_with('/') {
        return Err("ends with \"/\"".to_owned());
    }
    let depth = path.split('/').count();
    if depth > limits.max_depth {
        return Err(format!(
            "has {depth} segments, more than the limit of {}",
            limits.max_depth
        ));
    }
    for (i, segment) in path.split('/').enumerate() {
        check_segment(segment).map_err(|reason| format!("segment {} {reason}", i + 1))?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> std::result::Result<(), String> {
    if segment.is_empty() {
        return Err("is empty".to_owned());
    }
    if segment == "." || segment == ".." {
        return Err(format!("is {segment:?}"));
    }
    if let Some(last) = segment.chars().last().filter(|c| matches!(c, '.' | ' ')) {
        return Err(format!(
            "{segment:?} ends with {:?}, which Windows drops",
            last.to_string()
        ));
    }
    if is_windows_device(segment) {
        return Err(format!(
            "{segment:?} is a device name that Windows reserves"
        ));
    }
    Ok(())
}

/// Whether Windows reads `segment` as a device: `CON`, `PRN`, `AUX`, `NUL`,
/// `COM0`-`COM9`, `LPT0`-`LPT9` (and `COM¹`-`COM³`, `LPT¹`-`LPT³`), in any
/// case, alone or before an extension, with or without spaces before it.
fn is_windows_device(segment: &str) -> bool {
    let stem = segment
        .split('.')
        .next()
        .unwrap_or(segment)
        .trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => ["COM", "LPT"].iter().any(|prefix| {
            upper.strip_prefix(prefix).is_some_and(|rest| {
                matches!(
                    rest,
                    "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
                )
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PathLimits {
        PathLimits::default()
    }

    /// `expected` is `None` for a valid path, else text the reason contains.
    fn check(path: &str, expected: Option<&str>) {
        match (validate_path(path, &limits()), expected) {
            (Ok(()), None) => {}
            (Err(Error::InvalidPath { path: p, reason }), Some(want)) => {
                assert_eq!(p, path);
                assert!(
                    reason.contains(want),
                    "path {path:?}\nreason {reason:?}\nshould contain {want:?}"
                );
            }
            (got, want) => panic!("path {path:?}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn good_paths() {
        let longest = "a".repeat(512);
        let deepest = vec!["d"; 16].join("/");
        for path in [
            "a",
            "config/edge.toml",
            "static/css/site.min.css",
            ".well-known/security.txt",
            "a..b/c",
            ".hidden",
            "with space/x y",
            "caf\u{e9}.txt",
            "日本/語.txt",
            "CONSOLE",
            "COM10",
            "LPT",
            "auxiliary.txt",
            "nul-terminated",
            "con_x/y",
            "Ab/ab",
            longest.as_str(),
            deepest.as_str(),
        ] {
            check(path, None);
        }
    }

    #[test]
    fn bad_paths() {
        let long = "a".repeat(513);
        let long_chars = "\u{e9}".repeat(257); // 257 characters, 514 bytes
        let deep = vec!["d"; 17].join("/");
        for (path, reason) in [
            ("", "is empty"),
            (long.as_str(), "is 513 bytes, more than the limit of 512"),
            (long_chars.as_str(), "is 514 bytes"),
            (deep.as_str(), "has 17 segments, more than the limit of 16"),
            ("/abs", "starts with \"/\""),
            ("//x", "starts with \"/\""),
            ("dir/", "ends with \"/\""),
            ("a//b", "segment 2 is empty"),
            (".", "segment 1 is \".\""),
            ("..", "segment 1 is \"..\""),
            ("a/../b", "segment 2 is \"..\""),
            ("a/./b", "segment 2 is \".\""),
            ("a/b/..", "segment 3 is \"..\""),
            ("C:/x", "contains \":\" at byte 1"),
            ("file.txt:stream", "contains \":\" at byte 8"),
            ("a\\b", "contains \"\\\" at byte 1"),
            ("..\\x", "contains \"\\\""),
            ("a\u{0}b", "contains control character U+0000 at byte 1"),
            ("a\nb", "U+000A"),
            ("tab\there", "U+0009"),
            ("del\u{7f}", "U+007F"),
            ("c1\u{85}", "U+0085"),
            // "é" as e + combining acute: NFD, not NFC.
            ("cafe\u{301}.txt", "is not in Unicode NFC"),
            ("\u{212b}", "is not in Unicode NFC"), // ANGSTROM SIGN
            ("a/b.", "segment 2 \"b.\" ends with \".\""),
            ("...", "segment 1 \"...\" ends with \".\""),
            ("a /b", "segment 1 \"a \" ends with \" \""),
            ("CON", "segment 1 \"CON\" is a device name"),
            ("x/con", "segment 2 \"con\" is a device name"),
            ("Prn.txt", "device name"),
            ("aux.tar.gz", "device name"),
            ("NUL", "device name"),
            ("com1", "device name"),
            ("COM9.log", "device name"),
            ("lpt1", "device name"),
            ("LPT9/x", "device name"),
            ("COM\u{b9}", "device name"),
            ("CON .txt", "device name"),
        ] {
            check(path, Some(reason));
        }
    }

    /// Checks a set with at most `max_files` paths; `expected` is `None`
    /// when the set is valid, else the path blamed and text of the reason.
    fn check_set(paths: &[&str], max_files: usize, expected: Option<(&str, &str)>) {
        let limits = PathLimits {
            max_files,
            ..PathLimits::default()
        };
        match (validate_paths(paths.iter().copied(), &limits), expected) {
            (Ok(()), None) => {}
            (Err(Error::InvalidPath { path, reason }), Some((want_path, want))) => {
                assert_eq!(path, want_path, "paths {paths:?}: {reason}");
                assert!(
                    reason.contains(want),
                    "paths {paths:?}\nreason {reason:?}\nshould contain {want:?}"
                );
            }
            (got, want) => panic!("paths {paths:?}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn path_sets() {
        let many = 100_000;
        check_set(&[], many, None);
        check_set(&["a"], many, None);
        check_set(
            &["A.txt", "B/x", "a/b.txt", "a/b/c", "a/bc", "a/b~", "ab"],
            many,
            None,
        );
        // Byte order, not locale order: "a-b" < "a/b" < "a/b/c".
        check_set(&["a-b", "a/b/c", "a0"], many, None);
        check_set(
            &["b", "a"],
            many,
            Some((
                "a",
                "is not sorted: it sorts before \"b\", which is listed ahead",
            )),
        );
        check_set(&["a", "b", "b"], many, Some(("b", "is listed twice")));
        check_set(
            &["a", "ok/../x"],
            many,
            Some(("ok/../x", "segment 2 is \"..\"")),
        );
        check_set(
            &["A.txt", "a.txt"],
            many,
            Some(("a.txt", "equals \"A.txt\" after case folding")),
        );
        check_set(
            &["Stra\u{df}e/\u{c9}t\u{e9}", "stra\u{df}e/\u{e9}t\u{e9}"],
            many,
            Some(("stra\u{df}e/\u{e9}t\u{e9}", "after case folding")),
        );
        check_set(
            &["a/b", "a/b/c"],
            many,
            Some(("a/b/c", "is inside \"a/b\", but \"a/b\" is a file")),
        );
        // Not adjacent: "a/b.txt" sorts between the file and its "children".
        check_set(
            &["a/b", "a/b.txt", "a/b/c/d"],
            many,
            Some(("a/b/c/d", "is inside \"a/b\", but \"a/b\" is a file")),
        );
        check_set(
            &["A/b", "a/b/c"],
            many,
            Some((
                "a/b/c",
                "is inside \"a/b\", but \"A/b\" is a file (they differ only in case)",
            )),
        );
        check_set(
            &["A/b/c", "a/b"],
            many,
            Some((
                "a/b",
                "is a file, but \"A/b/c\" makes it a directory (they differ only in case)",
            )),
        );
        check_set(&["a", "b", "c"], 3, None);
        check_set(
            &["a", "b", "c", "d"],
            3,
            Some(("d", "is path number 4, more than the limit of 3 files")),
        );
    }

    #[test]
    fn a_full_bundle_of_paths_is_accepted() {
        let limits = PathLimits::default();
        let paths: Vec<String> = (0..limits.max_files)
            .map(|i| format!("d{:02}/f{i:06}.txt", i % 97))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(paths.len(), limits.max_files);
        validate_paths(paths.iter().map(String::as_str), &limits).expect("valid");
        let one_more = paths.iter().map(String::as_str).chain(["zz"]);
        let err = validate_paths(one_more, &limits).expect_err("too many");
        assert_eq!(
            err.to_string(),
            "path \"zz\": is path number 100001, more than the limit of 100000 files"
        );
    }
}
