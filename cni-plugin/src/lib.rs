//! The `aws-cni` CNI plugin: a drop-in replacement for amazon-vpc-cni-k8s's plugin binary.
//!
//! The library holds everything the binary does, so integration tests, benches and ipamd can
//! reuse parts of it: [`netlink`] and [`netns`] are shared with ipamd.
//!
//! - [`cmd`]: the verbs (entry point [`cmd::run`]);
//! - [`args`], [`types`]: the CNI environment and wire types per spec version;
//! - [`error`]: the error type and the one function that picks CNI error codes;
//! - [`ipamd`]: the gRPC client;
//! - [`wiring`]: upstream's data path (setup, teardown, check);
//! - [`state`]: per-attachment local state for DEL without ipamd;
//! - [`netlink`], [`netns`]: the shared kernel facade.

pub mod args;
pub mod cmd;
pub mod error;
pub mod ipamd;
pub mod log;
pub mod netlink;
pub mod netns;
pub mod state;
pub mod types;
pub mod wiring;
