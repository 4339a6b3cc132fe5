//! Measures the cold-start cost of the compiled-in table (ipamd's restart budget is 100 ms in
//! total): the first `lookup` (one row parsed), then the first `all` (whole table parsed), then
//! lookups against the parsed table.
//!
//! `cargo run --release -p awscni-limits --no-default-features --example table_load`

use std::time::Instant;

fn main() {
    let t0 = Instant::now();
    let found = awscni_limits::lookup("m5.large").is_some();
    let first_lookup = t0.elapsed();
    let t1 = Instant::now();
    let n = awscni_limits::all().len();
    let parse = t1.elapsed();
    let t2 = Instant::now();
    let mut hits = 0usize;
    for t in awscni_limits::all() {
        hits += usize::from(awscni_limits::lookup(&t.name).is_some());
    }
    let lookups = t2.elapsed();
    println!(
        "cold lookup (found={found}): {first_lookup:?}; full parse of {n} types: {parse:?}; \
         {hits} warm lookups: {lookups:?} ({:?} each)",
        lookups / u32::try_from(hits.max(1)).unwrap_or(1)
    );
}
