//! End-to-end tests on vpcsim (placeholder, being built).
