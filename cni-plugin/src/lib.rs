//! The `aws-cni` CNI plugin: a drop-in replacement for amazon-vpc-cni-k8s's plugin binary.
//!
//! The library holds everything the binary does, so integration tests and ipamd can reuse
//! parts of it: [`netlink`] and [`netns`] are shared with ipamd.

pub mod netlink;
pub mod netns;
