//! Containers inside pod VMs: the lifecycle state machine (`state`), persisted records
//! (`record`), the OCI spec built from the CRI request and the image (`spec`), CRI log
//! files (`logs`), Localhost seccomp profiles (`seccomp`), the `[containers]` config section
//! (`config`), lifecycle events (`events`), stopping a container's process (`stop`), streaming sessions
//! (`sessions`) and the manager (`manager`).

mod calls;
pub mod config;
pub mod error;
pub mod events;
mod exit;
pub mod log_writer;
pub mod logs;
pub mod manager;
mod output;
pub mod record;
pub mod seccomp;
pub mod sessions;
pub mod spec;
pub mod state;
mod stop;

pub use error::ContainerError;
pub use manager::{ContainerManager, CreateRequest, ExecResult};
