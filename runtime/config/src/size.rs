//! Byte sizes (`"16KiB"`) and durations (`"10s"`): strict parsing and the canonical rendering.

use std::time::Duration;

/// What a byte size looks like, for error messages.
pub(crate) const SIZE_EXPECTED: &str =
    r#"a byte size like "16KiB" (an integer followed by B, KB, KiB, MB, MiB, GB or GiB)"#;
/// What a duration looks like, for error messages.
pub(crate) const DURATION_EXPECTED: &str = r#"a duration like "2s""#;

/// Every unit parsing accepts, with its multiplier.
const UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses `<digits>[B|KB|KiB|MB|MiB|GB|GiB]`: no sign, no fraction, no
/// spaces, units case-sensitive (KB = 1000, KiB = 1024). Overflow is an error.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let digits_end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let expected = || {
        format!(
            "expected {SIZE_EXPECTED}, found {}",
            crate::error::toml_string(text)
        )
    };
    if digits.is_empty() {
        return Err(expected());
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, multiplier)) => *multiplier,
            None => return Err(expected()),
        }
    };
    let too_large = || {
        format!(
            "{} is too large for a byte size",
            crate::error::toml_string(text)
        )
    };
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    number.checked_mul(multiplier).ok_or_else(too_large)
}

/// Renders a byte size in the largest unit that divides it exactly
/// (`16KiB`, `10MiB`, `1GB`, `1500B`). Parses back to the same value.
pub(crate) fn format_size(bytes: u64) -> String {
    let unit = UNITS
        .iter()
        .filter(|(_, multiplier)| bytes != 0 && bytes.is_multiple_of(*multiplier))
        .max_by_key(|(_, multiplier)| *multiplier);
    match unit {
        Some((name, multiplier)) => format!("{}{name}", bytes / multiplier),
        None => format!("{bytes}B"),
    }
}

/// Parses a humantime duration: `"500ms"`, `"10s"`, `"5m"`, `"1h 30m"`.
/// Zero and upper bounds are the caller's business.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "expected {DURATION_EXPECTED}, found {}",
            crate::error::toml_string(text)
        )
    };
    if text.trim().is_empty() {
        return Err(expected());
    }
    humantime::parse_duration(text).map_err(|_| expected())
}

/// Renders a duration the way humantime parses it back (`"1m 30s"`).
pub(crate) fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_size(input: &str, expected: Result<u64, &str>) {
        assert_eq!(
            parse_size(input),
            expected.map_err(str::to_owned),
            "input {input:?}"
        );
        if let Ok(bytes) = expected {
            assert_eq!(
                parse_size(&format_size(bytes)),
                Ok(bytes),
                "round trip of {bytes}"
            );
        }
    }

    #[test]
    fn sizes() {
        let bad = |s: &str| {
            format!(
                r#"expected a byte size like "16KiB" (an integer followed by B, KB, KiB, MB, MiB, GB or GiB), found "{s}""#
            )
        };
        check_size("0", Ok(0));
        check_size("1500", Ok(1500));
        check_size("12B", Ok(12));
        check_size("16KiB", Ok(16 * 1024));
        check_size("16KB", Ok(16_000));
        check_size("10MiB", Ok(10 * 1024 * 1024));
        check_size("10MB", Ok(10_000_000));
        check_size("2GiB", Ok(2 << 30));
        check_size("2GB", Ok(2_000_000_000));
        check_size("007KiB", Ok(7 * 1024));
        check_size("18446744073709551615", Ok(u64::MAX));
        check_size("", Err(&bad("")));
        check_size("KiB", Err(&bad("KiB")));
        check_size("-1", Err(&bad("-1")));
        check_size("+1", Err(&bad("+1")));
        check_size("1.5MiB", Err(&bad("1.5MiB")));
        check_size("16 KiB", Err(&bad("16 KiB")));
        check_size("16kib", Err(&bad("16kib")));
        check_size("16TiB", Err(&bad("16TiB")));
        check_size(" 16", Err(&bad(" 16")));
        check_size(
            "18446744073709551616",
            Err(r#""18446744073709551616" is too large for a byte size"#),
        );
        check_size(
            "17179869184GiB",
            Err(r#""17179869184GiB" is too large for a byte size"#),
        );
    }

    #[test]
    fn size_rendering() {
        for (bytes, text) in [
            (0, "0B"),
            (1, "1B"),
            (1000, "1KB"),
            (1001, "1001B"),
            (2_000_000_000, "2GB"),
            (1024, "1KiB"),
            (16 * 1024, "16KiB"),
            (1536, "1536B"),
            (10 << 20, "10MiB"),
            (3 << 30, "3GiB"),
            (1025 << 20, "1025MiB"),
        ] {
            assert_eq!(format_size(bytes), text, "{bytes}");
        }
    }

    fn check_duration(input: &str, expected: Result<Duration, ()>) {
        let parsed = parse_duration(input);
        match expected {
            Ok(duration) => {
                assert_eq!(parsed, Ok(duration), "input {input:?}");
                assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
            }
            Err(()) => assert_eq!(
                parsed,
                Err(format!(r#"expected a duration like "2s", found {input:?}"#)),
                "input {input:?}"
            ),
        }
    }

    #[test]
    fn durations() {
        check_duration("2s", Ok(Duration::from_secs(2)));
        check_duration("500ms", Ok(Duration::from_millis(500)));
        check_duration("5m", Ok(Duration::from_secs(300)));
        check_duration("1h 30m", Ok(Duration::from_secs(5400)));
        check_duration("1m30s", Ok(Duration::from_secs(90)));
        check_duration("0s", Ok(Duration::ZERO));
        check_duration("fast", Err(()));
        check_duration("10", Err(()));
        check_duration("", Err(()));
        check_duration("  ", Err(()));
        check_duration("-1s", Err(()));
        check_duration("1.5s", Ok(Duration::from_millis(1500)));
        check_duration("99999999999999999999999h", Err(()));
    }

    #[test]
    fn duration_rendering() {
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2s 500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
