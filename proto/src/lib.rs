//! The gRPC wire contract between the `aws-cni` plugin and `ipamd`.
//!
//! - [`rpc`]: upstream's package `rpc` (services `CNIBackend`, `ConfigServerBackend`,
//!   `NPBackend`), byte-compatible with amazon-vpc-cni-k8s v1.23.1.
//! - [`ext`]: our own package `awscni.ext.v1` (CNI GC and CHECK helpers), kept apart so the
//!   upstream services stay unchanged.
//!
//! Generated at build time from `proto/*.proto` by protox + tonic-prost-build.

/// Upstream-compatible package `rpc`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod rpc {
    tonic::include_proto!("rpc");
}

/// Module tree mirroring the protobuf package `awscni.ext.v1` (the generated code refers to
/// `rpc` through `super::super::super`, so the nesting must match the package path).
pub mod awscni {
    /// `awscni.ext`
    pub mod ext {
        /// `awscni.ext.v1`
        #[allow(missing_docs, clippy::all, clippy::unwrap_used)]
        pub mod v1 {
            tonic::include_proto!("awscni.ext.v1");
        }
    }
}

/// Our extension package `awscni.ext.v1`.
pub use awscni::ext::v1 as ext;

/// Build version string sent by the plugin as `ClientVersion` and compared by ipamd
/// (wire-contract.md §4). Both binaries take it from this one constant, so a plugin and a
/// daemon from the same build always agree. Override at build time with `AWS_CNI_VERSION`
/// (e.g. `""` to talk to an upstream daemon whose release binaries carry an empty string).
pub const VERSION: &str = match option_env!("AWS_CNI_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Default path of ipamd's gRPC Unix socket (upstream v1.23+).
pub const DEFAULT_IPAMD_SOCKET: &str = "/var/run/aws-node/ipamd.sock";

/// Environment variable (ours) that overrides [`DEFAULT_IPAMD_SOCKET`] for both binaries;
/// used by tests and by several emulated nodes on one machine.
pub const IPAMD_SOCKET_ENV: &str = "AWS_VPC_CNI_IPAMD_SOCKET";

/// The named health-check service upstream registers besides `""`.
pub const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.aws-node";
