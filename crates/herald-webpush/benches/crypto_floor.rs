//! The cryptographic floor of a WebPush notification: one complete RFC 8291 encryption of the
//! benchmark's typical payload, as Herald does it per delivery (see `herald_webpush::crypto_floor`).
//!
//! ```text
//! cargo bench -p herald-webpush --bench crypto_floor
//! ```
//!
//! `cargo xtask bench` measures the same operation in the same run as its scenarios (the
//! `crypto_floor` example) and reports each WebPush scenario's CPU per notification against it.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald_webpush::crypto_floor::{Sample, TYPICAL_PAYLOAD};

fn floor(c: &mut Criterion) {
    let sample = Sample::new();
    let mut group = c.benchmark_group("webpush");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rfc8291_encrypt_typical_payload", |b| {
        b.iter(|| sample.encrypt(std::hint::black_box(TYPICAL_PAYLOAD.as_bytes())))
    });
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
