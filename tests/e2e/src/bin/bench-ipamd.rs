//! ipamd benchmarks on vpcsim (placeholder while the harness comes up).
fn main() {}
