//! Pod sandboxes: one micro-VM per pod. The state machine (`state`), the persisted records
//! (`record`), the VM's processes and files (`vm`), the
//! pod's hostname and sysctls (`identity`), and the manager that runs the lifecycle
//! (`manager`).

pub mod error;
pub mod identity;
pub mod manager;
pub mod record;
pub mod state;
pub mod vm;

pub use error::SandboxError;
pub use manager::{DnsConfig, RunRequest, SandboxManager};
