//! Times in documents: RFC 3339 in UTC with whole seconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A point in time with second precision, written `2026-11-27T10:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        Self(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    pub fn from_unix(secs: u64) -> Self {
        Self(secs)
    }

    pub fn unix(self) -> u64 {
        self.0
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }

    /// `self + d`, saturating.
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_secs()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        // humantime accepts fractional seconds and lowercase forms; documents
        // we write never contain them, and we accept only the canonical
        // form so that one instant has one spelling.
        let t = humantime::parse_rfc3339(text)
            .map_err(|e| format!("{text:?} is not an RFC 3339 UTC time: {e}"))?;
        let ts = Self::from_system(t);
        if ts.to_string() != text {
            return Err(format!(
                "{text:?} is not in the form YYYY-MM-DDTHH:MM:SSZ (whole seconds, UTC)"
            ));
        }
        Ok(ts)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.to_system()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_canonical_form_only() {
        let t = Timestamp::parse("2026-11-27T10:00:00Z").expect("valid");
        assert_eq!(t.to_string(), "2026-11-27T10:00:00Z");
        assert!(Timestamp::parse("2026-11-27T10:00:00.5Z").is_err());
        assert!(Timestamp::parse("2026-11-27 10:00:00Z").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(t.after(Duration::from_secs(60)) > t);
    }
}
