//! Pod sandboxes: one micro-VM per pod. The state machine (`state`), the persisted records
//! (`record`), the VM's processes and files (`vm`), the pod's hostname and sysctls
//! (`identity`), each runtime handler's VMM (`handlers`), RunPodSandbox's boot and its
//! undoing (`boot`), and the manager that runs the rest of the lifecycle (`manager`).

mod boot;
pub mod error;
mod handlers;
pub mod identity;
pub mod manager;
pub mod record;
pub mod state;
pub mod vm;

pub use error::SandboxError;
pub use handlers::size_vm;
pub use manager::{DnsConfig, RunRequest, SandboxManager};
