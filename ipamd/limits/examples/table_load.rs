//! Measures the one-time cost of parsing the compiled-in table and of a lookup (ipamd's
//! restart budget is 100 ms in total). Run: `cargo run --release -p awscni-limits --example
//! table_load`.

use std::time::Instant;

fn main() {
    let t0 = Instant::now();
    let n = awscni_limits::all().len();
    let parse = t0.elapsed();
    let t1 = Instant::now();
    let mut hits = 0usize;
    for t in awscni_limits::all() {
        hits += usize::from(awscni_limits::lookup(&t.name).is_some());
    }
    let lookups = t1.elapsed();
    println!(
        "first access (parse {n} types): {parse:?}; {hits} lookups: {lookups:?} ({:?} each)",
        lookups / u32::try_from(hits.max(1)).unwrap_or(1)
    );
}
