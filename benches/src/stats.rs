//! Pure statistics: latency summaries of an HDR histogram, and medians, spreads and per-run
//! ratios over repeated runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms can hold, in microseconds (60 s); larger values saturate.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A new latency histogram: 1 µs to [`MAX_LATENCY_US`], three significant figures.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// Latency percentiles of one load run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises a histogram; an empty histogram gives all zeros.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Median of the finite values (mean of the middle two for an even count); `None` if there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Median with the smallest and largest value, the usual "median [min–max]" of repeated runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The [`Spread`] of the finite values; `None` if there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let median = median(values)?;
    let finite = values.iter().copied().filter(|x| x.is_finite());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.fold(f64::NEG_INFINITY, f64::max);
    Some(Spread { median, min, max })
}

/// Per-run ratios `numerator[i] / denominator[i]`, pairing runs by index. Runs without a
/// partner or with a zero or non-finite denominator are skipped, so a failed run does not
/// turn into an infinite ratio.
pub fn per_run_ratios(numerator: &[f64], denominator: &[f64]) -> Vec<f64> {
    numerator
        .iter()
        .zip(denominator)
        .filter(|(_, d)| d.is_finite() && **d != 0.0)
        .map(|(n, d)| n / d)
        .filter(|r| r.is_finite())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_median(values: &[f64], expected: Option<f64>) {
        assert_eq!(median(values), expected, "median of {values:?}");
    }

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        check_median(&[], None);
        check_median(&[f64::NAN], None);
        check_median(&[3.0], Some(3.0));
        check_median(&[3.0, 1.0, 2.0], Some(2.0));
        check_median(&[4.0, 1.0, 3.0, 2.0], Some(2.5));
        check_median(&[1.0, f64::NAN, 5.0, 3.0], Some(3.0));
        check_median(&[f64::INFINITY, 2.0], Some(2.0));
    }

    #[test]
    fn spread_reports_min_median_max() {
        assert_eq!(spread(&[]), None);
        assert_eq!(
            spread(&[10.0, 30.0, 20.0]),
            Some(Spread {
                median: 20.0,
                min: 10.0,
                max: 30.0
            })
        );
    }

    #[test]
    fn ratios_are_paired_by_run_and_skip_zero_denominators() {
        assert_eq!(
            per_run_ratios(&[50.0, 40.0, 30.0], &[100.0, 0.0, 60.0]),
            [0.5, 0.5]
        );
        assert_eq!(per_run_ratios(&[1.0, 2.0], &[2.0]), [0.5]);
        assert!(per_run_ratios(&[], &[1.0]).is_empty());
        // The median of per-run ratios differs from the ratio of medians on purpose: each run
        // compares two systems under the same machine conditions.
        let ratios = per_run_ratios(&[10.0, 30.0, 24.0], &[20.0, 40.0, 30.0]);
        assert_eq!(median(&ratios), Some(0.75));
    }

    #[test]
    fn latency_summary_of_a_histogram() -> anyhow::Result<()> {
        let mut h = latency_histogram()?;
        assert_eq!(
            LatencySummary::from_histogram(&h),
            LatencySummary::default()
        );
        for v in 1..=1000u64 {
            h.record(v)?;
        }
        h.saturating_record(MAX_LATENCY_US * 10);
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1001);
        assert_eq!(s.min_us, 1);
        assert!((498..=503).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.p999_us);
        assert!(s.max_us >= MAX_LATENCY_US - MAX_LATENCY_US / 1000, "{s:?}");
        Ok(())
    }
}
