//! Deterministic assignment: A/B variants and staged feature rollouts.
//!
//! A user's *bucket* for a flag or experiment is
//! `u64::from_le_bytes(blake3(flag ‖ user)[0..8]) mod 10000`, where `‖` is
//! byte concatenation of the two UTF-8 strings. It depends on nothing else,
//! so it is the same on every request, every edge node and every Rust
//! release.
//!
//! A rollout stage is a threshold in basis points (1/100 of a percent): a
//! user is in when their bucket is below it. Stages 0.1% → 1% → 10% → 100%
//! are thresholds 10 → 100 → 1000 → 10000, so every user in one stage stays
//! in all later ones.

/// Number of buckets.
pub const BUCKETS: u32 = 10_000;

/// The user's bucket for `flag`, in `0..10000`.
pub fn bucket(flag: &str, user: &str) -> u32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(flag.as_bytes());
    hasher.update(user.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(BUCKETS)) as u32
}

/// Whether `user` is in the rollout of `flag` at `threshold` basis points.
pub fn enabled(flag: &str, user: &str, threshold: u32) -> bool {
    bucket(flag, user) < threshold
}

/// Parses a stage: a percentage (`"0.1%"`, `"10%"`, `"2.5"`) with up to two
/// decimals, or `"on"`/`"all"` (100%) / `"off"` (0%). Returns basis points,
/// or `None` when it is not a stage.
pub fn parse_stage(stage: &str) -> Option<u32> {
    let stage = stage.trim();
    match stage {
        "on" | "all" | "true" => return Some(BUCKETS),
        "off" | "none" | "false" => return Some(0),
        _ => {}
    }
    let number = stage.strip_suffix('%').unwrap_or(stage).trim();
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 2 {
        return None;
    }
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u32 = match frac.len() {
        0 => 0,
        1 => frac.parse::<u32>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    let bp = whole.checked_mul(100)?.checked_add(frac)?;
    (bp <= BUCKETS).then_some(bp)
}

/// One variant of an experiment and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The variant's name.
    pub name: String,
    /// Its share, relative to the others' weights.
    pub weight: u32,
}

/// Parses variants written as `name` (weight 1) or `name:weight`.
pub fn parse_variants(items: &[String]) -> Vec<Variant> {
    items
        .iter()
        .filter_map(|item| {
            let (name, weight) = match item.rsplit_once(':') {
                Some((name, weight)) => (name.trim(), weight.trim().parse().ok()?),
                None => (item.trim(), 1),
            };
            (!name.is_empty()).then(|| Variant {
                name: name.to_owned(),
                weight,
            })
        })
        .collect()
}

/// The variant of `experiment` for `user`: the buckets are split over the
/// variants in order, in proportion to their weights. `None` when there are
/// no variants or every weight is 0.
pub fn variant<'a>(experiment: &str, user: &str, variants: &'a [Variant]) -> Option<&'a Variant> {
    let total: u64 = variants.iter().map(|v| u64::from(v.weight)).sum();
    if total == 0 {
        return None;
    }
    let point = u64::from(bucket(experiment, user)) * total / u64::from(BUCKETS);
    let mut upto = 0u64;
    variants.iter().find(|v| {
        upto += u64::from(v.weight);
        point < upto
    })
}
