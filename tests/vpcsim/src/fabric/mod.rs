//! Network-namespace fabric (being built).
