//! What the benchmark binaries share: the `--runs N` argument and medians.

use std::time::Duration;

/// The value of `--runs N` on the command line, or `default`.
pub fn runs_arg(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (sorts it).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
