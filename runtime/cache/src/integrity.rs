//! Body integrity: the verification policy for hits, the scrubber's report, and strong ETags
//! derived from blake3 hashes.

use http::HeaderValue;

/// How often a memory hit re-hashes the body before serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Verify one hit in `n` (deterministic counter). `Sample(1)` = every hit, `Sample(0)` =
    /// never on hits (the scrubber still verifies every entry over time).
    Sample(u32),
    /// Verify every hit.
    Always,
}

impl Default for Integrity {
    fn default() -> Self {
        Integrity::Sample(100)
    }
}

/// What one bounded scrubber pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Entries re-hashed in this call.
    pub checked: usize,
    /// Entries whose hash mismatched (evicted).
    pub failed: usize,
    /// The cursor reached the end of the index and wrapped: every entry present at the start
    /// of the cycle has been visited.
    pub wrapped: bool,
}

/// A strong ETag for content the edge serves itself: `"b3-<first 32 hex chars of the hash>"`.
pub fn strong_etag(hash: &blake3::Hash) -> HeaderValue {
    let hex = hash.to_hex();
    let short = hex.as_str().get(..32).unwrap_or(hex.as_str());
    HeaderValue::from_str(&format!("\"b3-{short}\"")).unwrap_or(HeaderValue::from_static("\"b3\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_etag_format() {
        let hash = blake3::hash(b"hello");
        let etag = strong_etag(&hash);
        let text = etag.to_str().unwrap();
        assert_eq!(text.len(), 32 + 5);
        assert_eq!(text, format!("\"b3-{}\"", &hash.to_hex()[..32]));
        assert_eq!(Integrity::default(), Integrity::Sample(100));
    }
}
