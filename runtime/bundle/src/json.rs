//! Strict JSON parsing for signed documents: duplicate keys, trailing data
//! and deep nesting are refused, and every error says where it happened.
//!
//! serde_json keeps the last of two equal keys (or, for struct fields,
//! errors without saying where), so two parsers could read one signed
//! payload differently. Parsing here happens in two steps: the bytes become
//! a [`serde_json::Value`] through a visitor that refuses a repeated key and
//! nesting deeper than [`MAX_DEPTH`], then the target type is deserialized
//! from that value with [`serde_path_to_error`] so a type error names its
//! path (`files[3].size`).

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::envelope::DocKind;
use crate::error::{Error, Result};

/// The deepest nesting of arrays and objects accepted; the top-level value
/// counts as one level.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses `bytes` as one JSON document of type `T`, refusing duplicate keys
/// at any depth, trailing data and nesting deeper than 64 levels.
///
/// Every error is [`Error::Malformed`] for `doc`, with a reason naming the
/// JSON path of the problem.
pub fn from_slice_strict<T: DeserializeOwned>(doc: DocKind, bytes: &[u8]) -> Result<T> {
    parse_strict(bytes).map_err(|reason| Error::Malformed { doc, reason })
}

/// [`from_slice_strict`] without a document kind, for callers (the audit
/// log) that report problems their own way.
pub(crate) fn parse_strict<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let value = parse_value(bytes)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("at {path}: {inner}")
        }
    })
}

fn parse_value(bytes: &[u8]) -> std::result::Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue {
        at: &JsonPath::Root,
        depth: 0,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Where a value sits in the document, as a list linked through the stack
/// so that nothing is allocated unless an error is reported.
enum JsonPath<'a> {
    Root,
    Key(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonPath::Root => f.write_str("the top level"),
            JsonPath::Key(JsonPath::Root, key) => f.write_str(key),
            JsonPath::Key(parent, key) => write!(f, "{parent}.{key}"),
            JsonPath::Index(JsonPath::Root, i) => write!(f, "[{i}]"),
            JsonPath::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Builds a [`Value`], refusing repeated keys and excessive nesting.
struct StrictValue<'a> {
    at: &'a JsonPath<'a>,
    /// Containers enclosing this value.
    depth: usize,
}

impl StrictValue<'_> {
    fn enter<E: de::Error>(&self) -> std::result::Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_DEPTH} levels at {}",
                self.at
            )));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        // JSON text cannot spell a non-finite number, so this is never Null.
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        loop {
            let at = JsonPath::Index(self.at, items.len());
            match seq.next_element_seed(StrictValue { at: &at, depth })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = JsonPath::Key(self.at, &key);
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {key:?} at {at}"
                )));
            }
            let value = map.next_value_seed(StrictValue { at: &at, depth })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        version: u64,
        files: Vec<File>,
        #[serde(default)]
        meta: Value,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct File {
        path: String,
        size: u64,
    }

    /// Parses `input` as a [`Doc`]; `expected` is `Ok` with the document as
    /// JSON, or `Err` with text the reason must contain.
    fn check(input: &str, expected: std::result::Result<Value, &str>) {
        let got = from_slice_strict::<Doc>(DocKind::Manifest, input.as_bytes());
        match (got, expected) {
            (Ok(doc), Ok(want)) => {
                let want: Doc = serde_json::from_value(want).expect("test document");
                assert_eq!(doc, want, "input {input}");
            }
            (Err(Error::Malformed { doc, reason }), Err(want)) => {
                assert_eq!(doc, DocKind::Manifest);
                assert!(
                    reason.contains(want),
                    "input {input}\nreason {reason:?}\nshould contain {want:?}"
                );
            }
            (got, want) => panic!("input {input}\ngot {got:?}\nwanted {want:?}"),
        }
    }

    #[test]
    fn documents() {
        let one = r#"{"path":"a","size":1}"#;
        check(
            &format!(r#"{{"version":1,"files":[{one}]}}"#),
            Ok(json!({"version":1,"files":[{"path":"a","size":1}]})),
        );
        check(
            " \n{\"version\":2,\"files\":[],\"meta\":{\"a\":[1,2.5,null,true]}}\n ",
            Ok(json!({"version":2,"files":[],"meta":{"a":[1,2.5,null,true]}})),
        );
        // Duplicate keys, at the top level and nested.
        check(
            r#"{"version":1,"files":[],"version":2}"#,
            Err(r#"duplicate key "version" at version"#),
        );
        check(
            &format!(r#"{{"version":1,"files":[{one},{one},{{"path":"b","size":1,"path":"c"}}]}}"#),
            Err(r#"duplicate key "path" at files[2].path"#),
        );
        check(
            r#"{"version":1,"files":[],"meta":{"a":[{"b":{"c":1,"c":1}}]}}"#,
            Err(r#"duplicate key "c" at meta.a[0].b.c"#),
        );
        // Equal after unescaping is equal.
        check(
            r#"{"version":1,"files":[],"\u0076ersion":1}"#,
            Err(r#"duplicate key "version" at version"#),
        );
        // Unknown and missing fields, wrong types: the path is named.
        check(
            &format!(r#"{{"version":1,"files":[{one},{{"path":"b","size":1,"mode":7}}]}}"#),
            Err("at files[1].mode: unknown field `mode`"),
        );
        check(
            r#"{"version":1,"files":[],"extra":1}"#,
            Err("unknown field `extra`"),
        );
        check(
            &format!(r#"{{"version":1,"files":[{one},{one},{one},{{"path":"d","size":"4"}}]}}"#),
            Err(r#"at files[3].size: invalid type: string "4", expected u64"#),
        );
        check(
            r#"{"version":-1,"files":[]}"#,
            Err("at version: invalid value: integer `-1`, expected u64"),
        );
        check(
            r#"{"version":1,"files":[{"path":"a"}]}"#,
            Err("at files[0]: missing field `size`"),
        );
        check(r#"{"files":[]}"#, Err("missing field `version`"));
        check(
            r#"[1]"#,
            Err("invalid length 1, expected struct Doc with 3 elements"),
        );
        check(
            r#""doc""#,
            Err("invalid type: string \"doc\", expected struct Doc"),
        );
        // Not one JSON document.
        check("", Err("EOF while parsing"));
        check(r#"{"version":1,"files":[]"#, Err("EOF while parsing"));
        check(
            r#"{"version":1,"files":[]} x"#,
            Err("trailing characters at line 1 column 26"),
        );
        check(
            r#"{"version":1,"files":[]}{"version":1,"files":[]}"#,
            Err("trailing characters"),
        );
        check(
            r#"{"version":1,"files":[],}"#,
            Err("trailing comma at line 1 column 25"),
        );
    }

    #[test]
    fn nesting_is_limited_to_64_levels() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let parse = |text: &str| parse_strict::<Value>(text.as_bytes());

        let deepest = parse(&nested(MAX_DEPTH)).expect("64 levels are accepted");
        let mut inner = &deepest;
        for _ in 1..MAX_DEPTH {
            inner = &inner[0];
        }
        assert_eq!(inner, &json!([]));

        let reason = parse(&nested(MAX_DEPTH + 1)).expect_err("65 levels are refused");
        assert!(
            reason.starts_with(&format!(
                "nesting deeper than 64 levels at {}",
                "[0]".repeat(MAX_DEPTH)
            )),
            "{reason}"
        );
        // Far deeper than serde_json's own limit: still our error, no
        // stack overflow.
        let reason = parse(&nested(100_000)).expect_err("refused");
        assert!(reason.starts_with("nesting deeper than 64"), "{reason}");

        let in_objects = format!(
            r#"{}1{}"#,
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        let reason = parse(&in_objects).expect_err("refused");
        let path = vec!["a"; MAX_DEPTH].join(".");
        assert!(
            reason.starts_with(&format!("nesting deeper than 64 levels at {path} ")),
            "{reason}"
        );

        // Inside a document the top-level object is the first level.
        let doc = format!(
            r#"{{"version":1,"files":[],"meta":{}}}"#,
            nested(MAX_DEPTH - 1)
        );
        check(&doc, Ok(serde_json::from_str(&doc).expect("valid JSON")));
        let doc = format!(r#"{{"version":1,"files":[],"meta":{}}}"#, nested(MAX_DEPTH));
        check(&doc, Err("nesting deeper than 64 levels at meta[0]"));
    }

    #[test]
    fn error_names_the_document() {
        let err = from_slice_strict::<Doc>(DocKind::Head, br#"{"version":1,"version":1}"#)
            .expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            r#"head: malformed: duplicate key "version" at version at line 1 column 22"#
        );
    }
}
