//! The periodic summary: how many exchanges were rebuilt, production latency, and every loss
//! counter (kernel, ring reader, reassembly and HTTP framing), so that no drop goes unseen.
use hdrhistogram::Histogram;

/// Production latency distribution and exchange count over the daemon's lifetime.
#[derive(Debug)]
pub struct ExchangeStats {
    pub exchanges: u64,
    latency_us: Histogram<u64>,
}

impl Default for ExchangeStats {
    fn default() -> Self {
        Self {
            exchanges: 0,
            // 1 µs .. 1 h at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl ExchangeStats {
    pub fn record(&mut self, latency_ns: u64) {
        self.exchanges += 1;
        self.latency_us.saturating_record((latency_ns / 1_000).max(1));
    }

    /// Latency quantile in milliseconds (0 when nothing was recorded).
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        if self.latency_us.is_empty() {
            0.0
        } else {
            self.latency_us.value_at_quantile(quantile) as f64 / 1_000.0
        }
    }
}

/// `name=value` pairs with non-zero values, or `none`.
pub fn nonzero(pairs: impl IntoIterator<Item = (&'static str, u64)>) -> String {
    let text: Vec<String> =
        pairs.into_iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
    if text.is_empty() { "none".into() } else { text.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_counts() {
        let mut s = ExchangeStats::default();
        assert_eq!(s.latency_ms(0.5), 0.0);
        for ms in 1..=100u64 {
            s.record(ms * 1_000_000);
        }
        assert_eq!(s.exchanges, 100);
        assert!((s.latency_ms(0.5) - 50.0).abs() < 0.1, "{}", s.latency_ms(0.5));
        assert!((s.latency_ms(0.99) - 99.0).abs() < 0.1, "{}", s.latency_ms(0.99));
    }

    #[test]
    fn nonzero_lists_only_losses() {
        assert_eq!(nonzero([("a", 0), ("b", 2), ("c", 1)]), "b=2 c=1");
        assert_eq!(nonzero([("a", 0)]), "none");
    }
}
