//! vpcsim: an AWS VPC in a box.
//!
//! Two halves share this crate:
//! - the **emulator** (`model`, `ec2`, `imds`, `faults`, `admin`, `server`): EC2 Query-API and
//!   IMDSv2 over HTTP, backed by one in-memory model with AWS semantics;
//! - the **fabric** (`fabric`): network namespaces and veth links that make the model's ENIs
//!   and addresses real, reconciled from [`view::FabricView`] snapshots.
//!
//! The only contract between the halves is [`view`]: the emulator publishes snapshots, the
//! fabric applies them.

pub mod admin;
pub mod ec2;
pub mod fabric;
pub mod faults;
pub mod imds;
pub mod model;
pub mod server;
pub mod types;
pub mod view;

pub use model::{ApiError, InstanceInfo};
pub use server::{ActionCounters, LoopbackEndpoints, Sim, SimConfig};
