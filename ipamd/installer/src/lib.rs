//! Node-side installation surface of the AWS VPC CNI (the `aws-node` pod's entrypoint).
//!
//! - [`entrypoint`]: install `aws-cni`, start ipamd, wait for its gRPC health check, then write
//!   `10-aws.conflist` — the node becomes network-ready only once ipamd can serve.
//! - [`init`]: the init container's sysctls and standard-plugin copy.
//! - [`probe`]: `grpc-health-probe`, flag- and exit-code-compatible with upstream's.
//! - [`config`]: upstream's environment variables, validated with errors naming the variable.

pub mod config;
pub mod conflist;
pub mod entrypoint;
pub mod fsutil;
pub mod health;
pub mod imds;
pub mod init;
pub mod probe;
