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
}
