//! Order statistics over samples, the only statistics the figures need.

/// The value at percentile `p` (0–100) by the nearest-rank method; `None` for
/// no samples. Nearest rank never invents a value that was not measured.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// The median as the mean of the two middle values for an even count, so that
/// ten pairs give a fair middle.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// Percentile over integer microsecond samples, in milliseconds (the load
/// client keeps latencies as integers to stay cheap at high request rates).
pub fn percentile_us_as_ms(sorted_us: &[u32], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us
        .get(rank.saturating_sub(1).min(sorted_us.len() - 1))
        .map(|us| f64::from(*us) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn integer_percentiles_in_ms() {
        let v: Vec<u32> = (1..=1000).map(|i| i * 10).collect();
        assert_eq!(percentile_us_as_ms(&v, 50.0), Some(5.0));
        assert_eq!(percentile_us_as_ms(&v, 99.0), Some(9.9));
        assert_eq!(percentile_us_as_ms(&[], 99.0), None);
    }
}
