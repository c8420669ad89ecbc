//! Moat's host-agent API, generated from `proto/moat/agent.proto` at build time, and the
//! rules both sides apply to what it carries (`sysctl`).

pub mod sysctl;
pub mod userns;

/// Version 1 of the agent API.
pub mod agent {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("moat.agent.v1");
}
