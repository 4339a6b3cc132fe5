//! ipamd: the per-node IP address management daemon.
//!
//! Layout: pure logic (`config`, `datastore`, `pool`, `checkpoint`) has no I/O and is unit-tested
//! without root; effects (`imds`, `ec2`, `hostnet`) sit behind traits; `rpc` and `daemon` glue
//! them together.

pub mod checkpoint;
pub mod config;
pub mod datastore;
pub mod pool;

pub mod daemon;
pub mod rpc;

pub mod ec2;
pub mod eni;
pub mod hostnet;
pub mod imds;
pub mod limiter;

pub mod introspect;
pub mod logging;
pub mod metrics;
