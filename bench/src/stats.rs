//! Samples of one figure, and the order statistics the report prints.

use std::time::Duration;

/// The timings of one variant, one per round.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().map(Duration::as_secs_f64).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median in seconds (mean of the two middle values for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The 90th percentile, nearest rank.
    pub fn p90(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = (0.9 * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

/// Seconds as `12.3 µs`, `4.56 ms` or `1.23 s`.
pub fn fmt_secs(s: f64) -> String {
    if s.is_nan() {
        "n/a".into()
    } else if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// `1.07×`.
pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms: &[u64]) -> Samples {
        Samples(ms.iter().map(|&m| Duration::from_millis(m)).collect())
    }

    #[test]
    fn order_statistics() {
        let s = samples(&[5, 1, 3, 2, 4]);
        assert_eq!(s.median(), 0.003);
        assert_eq!(s.min(), 0.001);
        assert_eq!(s.p90(), 0.005);
        let even = samples(&[1, 2, 3, 4]);
        assert_eq!(even.median(), 0.0025);
        let ten = samples(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(ten.p90(), 0.009);
        assert!(Samples::default().median().is_nan());
    }
}
