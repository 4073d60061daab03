//! Counters and histograms, written in the Prometheus text format.
//!
//! Everything here is lock-free on the recording side (relaxed atomics): recording never
//! waits and never fails. Rendering reads each counter once, so a scrape taken while
//! commands run may be off by the commands in flight, never more.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds, in the unit its name says.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then one for everything above the last bound.
    counts: Vec<AtomicU64>,
    /// Sum of the values in millionths of the unit.
    sum_micro: AtomicU64,
}

/// Bounds for batch sizes, in commands.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// Bounds for events per batch.
pub const EVENT_BATCH_BOUNDS: &[f64] = &[0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];

/// Bounds for latencies, in seconds.
pub const LATENCY_BOUNDS_S: &[f64] =
    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

impl Histogram {
    /// An empty histogram over `bounds`, which must increase.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, value: f64) {
        let bucket = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micro = (value.max(0.0) * 1e6).min(u64::MAX as f64) as u64;
        self.sum_micro.fetch_add(micro, Ordering::Relaxed);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the values recorded, to a millionth of the unit.
    pub fn sum(&self) -> f64 {
        self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Appends the histogram's lines (`_bucket`, `_sum`, `_count`) for `name` with `labels`
    /// (already formatted, `key="value"` pairs joined by commas, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let separator = if labels.is_empty() { "" } else { "," };
        for (index, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[index].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Counters keyed by a tuple of label values.
#[derive(Debug, Default)]
pub struct CounterFamily {
    counters: std::sync::RwLock<BTreeMap<Vec<String>, AtomicU64>>,
}

impl CounterFamily {
    /// Adds one to the counter for `labels`.
    pub fn increment(&self, labels: &[&str]) {
        {
            let counters = self.counters.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let found = counters.iter().find(|(key, _)| key.iter().map(String::as_str).eq(labels.iter().copied()));
            if let Some((_, counter)) = found {
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let key: Vec<String> = labels.iter().map(|label| (*label).to_owned()).collect();
        let mut counters = self.counters.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// The counter for `labels`.
    pub fn get(&self, labels: &[&str]) -> u64 {
        let key: Vec<String> = labels.iter().map(|label| (*label).to_owned()).collect();
        let counters = self.counters.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.get(&key).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Appends one line per counter, naming the labels `names`.
    pub fn render(&self, out: &mut String, name: &str, names: &[&str]) {
        let counters = self.counters.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (values, counter) in counters.iter() {
            let labels = label_pairs(names, values);
            let _ = writeln!(out, "{name}{{{labels}}} {}", counter.load(Ordering::Relaxed));
        }
    }
}

/// `key="value"` pairs, escaped as the text format asks.
pub fn label_pairs(names: &[&str], values: &[String]) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_cumulatively() {
        let histogram = Histogram::new(&[1.0, 10.0]);
        for value in [0.5, 1.0, 5.0, 50.0] {
            histogram.record(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "shop=\"main\"");
        assert_eq!(
            out,
            "h_bucket{shop=\"main\",le=\"1\"} 2\nh_bucket{shop=\"main\",le=\"10\"} 3\n\
             h_bucket{shop=\"main\",le=\"+Inf\"} 4\nh_sum{shop=\"main\"} 56.5\nh_count{shop=\"main\"} 4\n"
        );
        assert_eq!(histogram.count(), 4);
    }

    #[test]
    fn counters_are_kept_per_label_set() {
        let family = CounterFamily::default();
        family.increment(&["pay", "accepted"]);
        family.increment(&["pay", "accepted"]);
        family.increment(&["pay", "rejected"]);
        assert_eq!(family.get(&["pay", "accepted"]), 2);
        let mut out = String::new();
        family.render(&mut out, "c", &["kind", "outcome"]);
        assert_eq!(out, "c{kind=\"pay\",outcome=\"accepted\"} 2\nc{kind=\"pay\",outcome=\"rejected\"} 1\n");
    }
}
