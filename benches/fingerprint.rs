//! `idem::Fingerprint::of` against the raw hash of the same value's bincode bytes, in the
//! same run (BENCHMARKS.md).
//!
//! Per size (~64 B, ~1 KiB, ~64 KiB of bincode): `idem` hashes the value through serde;
//! `sha256` and `blake3` hash its bincode bytes, serialized once outside the loop, so they
//! time only the hash; `bincode+sha256` serializes and hashes, what a hand-written
//! fingerprint costs (for information). Throughput is in bincode bytes for all of them.
//! Plus a map-heavy request and two one-sided payloads (all numbers, all text), for
//! information.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

mod support;

use support::clock;

/// A request with a few fields and a payload that grows: half numbers, half text.
#[derive(Serialize)]
struct Order {
    id: u64,
    customer: String,
    currency: String,
    amounts: Vec<u64>,
    memo: String,
}

const WORDS: &[&str] = &[
    "invoice",
    "consulting",
    "services",
    "november",
    "travel",
    "hardware",
    "licence",
    "support",
];

fn text(len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = 0;
    while s.len() < len {
        s.push_str(WORDS[i % WORDS.len()]);
        s.push(' ');
        i += 1;
    }
    s.truncate(len);
    s
}

/// Amounts in cents, 1,000.00 to 40,000.00: 5 bytes each in bincode's varint.
fn amounts(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| 100_000 + (i * 7_919) % 3_900_000)
        .collect()
}

/// An order whose bincode encoding is about `size` bytes.
fn order(size: usize) -> Order {
    let fixed = 1 + 9 + 15 + 4 + 2 + 2; // id, customer, currency, length prefixes
    let payload = size.saturating_sub(fixed);
    Order {
        id: 1_733_000_000,
        customer: "cus_9s8d7f6g5h4j".to_owned(),
        currency: "EUR".to_owned(),
        amounts: amounts(payload / 2 / 5),
        memo: text(payload / 2),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
}

fn group<T: Serialize>(c: &mut Criterion, name: &str, label: &str, value: &T, extras: bool) {
    let bytes = encode(value);
    eprintln!(
        "fingerprint bench: {name}/{label} is {} bytes of bincode",
        bytes.len()
    );
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    if bytes.len() > 16 * 1024 {
        group.measurement_time(Duration::from_secs(4));
    }
    group.bench_with_input(BenchmarkId::new("idem", label), value, |b, v| {
        b.iter_custom(|iters| clock::time(iters, || idem::Fingerprint::of(black_box(v)).unwrap()))
    });
    group.bench_with_input(BenchmarkId::new("sha256", label), &bytes, |b, bytes| {
        b.iter_custom(|iters| {
            clock::time(iters, || {
                <[u8; 32]>::from(Sha256::digest(black_box(bytes.as_slice())))
            })
        })
    });
    if extras {
        group.bench_with_input(BenchmarkId::new("blake3", label), &bytes, |b, bytes| {
            b.iter_custom(|iters| clock::time(iters, || blake3::hash(black_box(bytes.as_slice()))))
        });
        group.bench_with_input(BenchmarkId::new("bincode+sha256", label), value, |b, v| {
            b.iter_custom(|iters| {
                clock::time(iters, || {
                    <[u8; 32]>::from(Sha256::digest(encode(black_box(v))))
                })
            })
        });
    }
    group.finish();
}

fn sizes(c: &mut Criterion) {
    for (label, size) in [("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        group(c, "fingerprint", label, &order(size), true);
    }
}

fn shapes(c: &mut Criterion) {
    let map: HashMap<String, u64> = (0..50u64)
        .map(|i| (format!("line-item-{i:02}"), 1_000 + i * 37))
        .collect();
    group(c, "fingerprint_shapes", "map50", &map, true);
    // One-sided 1 KiB payloads: where the per-value cost lies.
    group(c, "fingerprint_shapes", "u64x200", &amounts(200), false);
    group(c, "fingerprint_shapes", "text1KiB", &text(1021), false);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sizes, shapes
}
criterion_main!(benches);
