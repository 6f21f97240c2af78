//! A `metrics` recorder that keeps every counter, by name and labels, for tests that check
//! what idem counted.

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every counter registered, with its labels; install it with `metrics::with_local_recorder`.
#[derive(Default)]
pub struct Counters(Mutex<Vec<Registered>>);

/// A counter's name, its labels (`key`, `value`) and its count.
type Registered = (String, Vec<(String, String)>, Arc<Count>);

#[derive(Default)]
pub struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl Counters {
    /// The sum of the counters named `name` whose labels include every pair of `labels`.
    pub fn total(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counters = self.0.lock().unwrap();
        counters
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, count)| count.0.load(Ordering::SeqCst))
            .sum()
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = key.name().to_owned();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let mut counters = self.0.lock().unwrap();
        let found = counters.iter().find(|(n, l, _)| *n == name && *l == labels);
        let count = match found {
            Some((_, _, count)) => count.clone(),
            None => {
                let count = Arc::new(Count::default());
                counters.push((name, labels, count.clone()));
                count
            }
        };
        Counter::from_arc(count)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
