//! Small statistics over measured durations, and how they are printed.

use std::time::Duration;

/// The value at quantile `q` (0..=1) of `sorted` (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

/// Milliseconds with a precision that suits the magnitude.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

pub fn ms_opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), ms)
}

/// `a / b`, as "1.23×".
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() { "-".to_owned() } else { format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64()) }
}

/// P(X ≥ k) for X ~ Binomial(n, p).
///
/// Comparing two counts of rare events: if `a` events happened over
/// exposure `ea` and `b` over `eb`, and both have the same rate, then given
/// the total, `a` ~ Binomial(a + b, ea / (ea + eb)). A small upper tail says
/// `a` is significantly more than the same rate explains.
pub fn binomial_upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // Terms in log space: C(n, i) overflows f64 for a few hundred events.
    let ln_choose = |i: u64| (1..=i).map(|j| ((n - i + j) as f64).ln() - (j as f64).ln()).sum::<f64>();
    let tail: f64 = (k..=n).map(|i| (ln_choose(i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp()).sum();
    tail.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(d).collect();
        assert_eq!(quantile(&v, 0.5), Some(d(50)));
        assert_eq!(quantile(&v, 0.99), Some(d(99)));
        assert_eq!(quantile(&v, 1.0), Some(d(100)));
        assert_eq!(quantile(&v, 0.0), Some(d(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn median_of_even_counts_averages() {
        assert_eq!(median(&[d(4), d(1), d(3), d(2)]), Some(Duration::from_micros(2500)));
        assert_eq!(median(&[d(7)]), Some(d(7)));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn binomial_tails_match_exact_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Bin(4, 1/2): P(X ≥ 3) = 5/16, P(X ≥ 4) = 1/16.
        assert!(close(binomial_upper_tail(3, 4, 0.5), 5.0 / 16.0));
        assert!(close(binomial_upper_tail(4, 4, 0.5), 1.0 / 16.0));
        assert!(close(binomial_upper_tail(0, 4, 0.5), 1.0));
        assert!(close(binomial_upper_tail(5, 4, 0.5), 0.0));
        // Large n stays finite and monotone.
        let (a, b) = (binomial_upper_tail(150, 300, 0.5), binomial_upper_tail(180, 300, 0.5));
        assert!(a > 0.45 && a < 0.55, "{a}");
        assert!(b < 0.001 && b > 0.0, "{b}");
    }
}
