//! How long round trips take: a histogram with fixed bucket bounds, counted with atomics so
//! every thread can record without a lock. Read as a snapshot (for metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: loopback exchanges take tens of µs, a
/// stalled server hits the timeout (seconds).
pub const BOUNDS_MICROS: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 1_000_000,
    5_000_000,
];

#[derive(Default)]
pub struct LatencyHistogram {
    /// Exchanges at or below each bound (not cumulative), and one more for the rest.
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// What the histogram held at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// (upper bound in µs, exchanges at or below it), cumulative as Prometheus wants.
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_micros: u64,
}

impl LatencyHistogram {
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BOUNDS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let cumulative = BOUNDS_MICROS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        LatencySnapshot {
            cumulative,
            count: running + self.buckets[BOUNDS_MICROS.len()].load(Ordering::Relaxed),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_rest_counts() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(300));
        h.record(Duration::from_secs(9));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], (25, 1));
        assert_eq!(s.cumulative[3], (250, 1));
        assert_eq!(s.cumulative[4], (500, 2));
        assert_eq!(s.cumulative.last().unwrap().1, 2);
        assert_eq!(s.sum_micros, 9_000_310);
    }
}
