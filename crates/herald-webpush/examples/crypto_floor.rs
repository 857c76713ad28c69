//! Measures the cryptographic floor for `cargo xtask bench`: encrypts the typical payload for
//! `--seconds` (default 2) on one thread and prints one JSON line with the CPU microseconds per
//! message (this thread's CPU time, so other load on the machine does not inflate it).

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use herald_webpush::crypto_floor::{Sample, TYPICAL_PAYLOAD};

fn thread_cpu() -> Duration {
    // `/proc/thread-self/stat` has utime and stime in clock ticks (fields 14 and 15); the
    // schedstat line has nanoseconds on the CPU, finer grained: use it when it is there.
    if let Ok(text) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return Duration::from_nanos(ns);
        }
    }
    Duration::ZERO
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let sample = Sample::new();
    // Warm-up: page in the code, settle the CPU frequency.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        std::hint::black_box(sample.encrypt(TYPICAL_PAYLOAD.as_bytes()));
    }
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let mut n = 0u64;
    while wall.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            std::hint::black_box(sample.encrypt(std::hint::black_box(TYPICAL_PAYLOAD.as_bytes())));
        }
        n += 64;
    }
    let cpu = thread_cpu().saturating_sub(cpu);
    let wall = wall.elapsed();
    // Without schedstat, wall time on an otherwise idle thread is the best there is.
    let spent = if cpu.is_zero() { wall } else { cpu };
    println!(
        "{{\"microseconds_per_message\":{:.3},\"messages\":{n},\"wall_seconds\":{:.3},\"cpu_clock\":{}}}",
        spent.as_secs_f64() * 1e6 / n as f64,
        wall.as_secs_f64(),
        !cpu.is_zero()
    );
}
