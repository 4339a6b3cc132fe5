//! The plugin's error type and the one place where CNI error codes are chosen.

use crate::netlink::NlError;
use crate::netns::NsError;

/// Every way a verb can fail. [`PluginError::cni_code`] maps them to spec codes.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Unsupported or missing `cniVersion`, or a verb the config version does not allow.
    #[error("{0}")]
    IncompatibleVersion(String),
    /// A network config key we do not support (message names key and value).
    #[error("{0}")]
    UnsupportedField(String),
    /// The container's network namespace does not exist.
    #[error("{0}")]
    ContainerUnknown(String),
    /// Missing or invalid `CNI_*` environment variables.
    #[error("{0}")]
    InvalidEnv(String),
    /// Reading stdin failed, or it was too large.
    #[error("{0}")]
    Io(String),
    /// stdin is not valid JSON / not a config object.
    #[error("{0}")]
    Decode(String),
    /// Invalid network configuration.
    #[error("{0}")]
    Config(String),
    /// ipamd is not reachable, or has no address right now: the runtime should retry.
    #[error("{0}")]
    TryAgain(String),
    /// STATUS: ipamd is not ready to serve ADD.
    #[error("{0}")]
    NotAvailable(String),
    /// Kernel networking failed while wiring or checking.
    #[error("{ctx}: {source}")]
    Netlink {
        /// What we were doing.
        ctx: String,
        /// The netlink failure.
        #[source]
        source: NlError,
    },
    /// Entering or opening a namespace failed (other than "it does not exist").
    #[error("{0}")]
    Netns(#[from] NsError),
    /// ipamd answered with an error.
    #[error("{0}")]
    Ipamd(String),
    /// ipamd rejected our `ClientVersion` (plugin and daemon from different builds).
    #[error("{0}")]
    VersionMismatch(String),
    /// CHECK found drift between what ADD built and what is there now.
    #[error("{0}")]
    CheckFailed(String),
    /// ADD: `CNI_IFNAME` already exists in the container.
    #[error("{0}")]
    InterfaceExists(String),
    /// Anything else (local state I/O, logic errors).
    #[error("{0}")]
    Internal(String),
}

/// Our plugin-specific codes (100+), documented in docs/plugin.md.
pub mod codes {
    /// Kernel networking (netlink, sysctl, netns) failed.
    pub const NETWORKING: u32 = 100;
    /// ipamd answered with an error other than "unavailable".
    pub const IPAMD_ERROR: u32 = 101;
    /// ipamd refused our `ClientVersion`.
    pub const VERSION_MISMATCH: u32 = 102;
    /// CHECK: something drifted.
    pub const CHECK_FAILED: u32 = 103;
    /// ADD: the interface already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 104;
    /// Internal error.
    pub const INTERNAL: u32 = 199;
}

impl PluginError {
    /// The only place CNI error codes are chosen.
    pub fn cni_code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion(_) => 1,
            Self::UnsupportedField(_) => 2,
            Self::ContainerUnknown(_) => 3,
            Self::InvalidEnv(_) => 4,
            Self::Io(_) => 5,
            Self::Decode(_) => 6,
            Self::Config(_) => 7,
            Self::TryAgain(_) => 11,
            Self::NotAvailable(_) => 50,
            Self::Netlink { .. } | Self::Netns(_) => codes::NETWORKING,
            Self::Ipamd(_) => codes::IPAMD_ERROR,
            Self::VersionMismatch(_) => codes::VERSION_MISMATCH,
            Self::CheckFailed(_) => codes::CHECK_FAILED,
            Self::InterfaceExists(_) => codes::INTERFACE_EXISTS,
            Self::Internal(_) => codes::INTERNAL,
        }
    }

    /// The short `msg` of the CNI error document (the long text goes to `details`).
    pub fn summary(&self) -> &'static str {
        match self {
            Self::IncompatibleVersion(_) => "Incompatible CNI version",
            Self::UnsupportedField(_) => "Unsupported field in network configuration",
            Self::ContainerUnknown(_) => "Container unknown or does not exist",
            Self::InvalidEnv(_) => "Invalid necessary environment variables",
            Self::Io(_) => "I/O failure",
            Self::Decode(_) => "Failed to decode content",
            Self::Config(_) => "Invalid network config",
            Self::TryAgain(_) => "Try again later",
            Self::NotAvailable(_) => "Plugin not available",
            Self::Netlink { .. } | Self::Netns(_) => "Pod networking failed",
            Self::Ipamd(_) => "ipamd returned an error",
            Self::VersionMismatch(_) => "Plugin and ipamd versions differ",
            Self::CheckFailed(_) => "CHECK found drift",
            Self::InterfaceExists(_) => "Interface already exists in the container",
            Self::Internal(_) => "Internal error",
        }
    }

    /// Wraps a netlink error with what we were doing.
    pub fn nl(ctx: impl Into<String>) -> impl FnOnce(NlError) -> Self {
        let ctx = ctx.into();
        move |source| Self::Netlink { ctx, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec_table() {
        assert_eq!(
            PluginError::IncompatibleVersion(String::new()).cni_code(),
            1
        );
        assert_eq!(PluginError::InvalidEnv(String::new()).cni_code(), 4);
        assert_eq!(PluginError::Decode(String::new()).cni_code(), 6);
        assert_eq!(PluginError::Config(String::new()).cni_code(), 7);
        assert_eq!(PluginError::TryAgain(String::new()).cni_code(), 11);
        assert_eq!(PluginError::NotAvailable(String::new()).cni_code(), 50);
        assert!(PluginError::CheckFailed(String::new()).cni_code() >= 100);
    }
}
