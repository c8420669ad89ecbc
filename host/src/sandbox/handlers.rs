//! Runtime handlers: the VMM each configured handler runs its pods under, as chosen for
//! this host at start-up, what Status reports about them, and a pod's VM size.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::manager::SandboxManager;
use crate::config::Config;
use crate::hypervisor::builtin::Builtin;
use crate::hypervisor::qemu::{Qemu, QemuConfig};
use crate::hypervisor::select::{VmmKind, select_with};
use crate::hypervisor::{HostCaps, Hypervisor};

/// A runtime handler's VMM.
#[derive(Clone)]
pub(super) struct HandlerVmm {
    pub(super) hypervisor: Arc<dyn Hypervisor>,
    pub(super) kind: VmmKind,
    /// Why this handler may not run pods (TCG forbidden), if so.
    pub(super) refused: Option<String>,
    /// The choice as made at start-up, for Status's verbose info.
    pub(super) selection: crate::hypervisor::select::Selection,
}

/// The hypervisor of each runtime handler, as `select` picks it for this host (one log line
/// each, with why): QEMU with the handler's acceleration override if it has one, or the
/// built-in VMM.
pub(super) fn hypervisors(config: &Config) -> HashMap<String, HandlerVmm> {
    let caps = HostCaps::probe();
    config
        .runtime
        .handlers
        .iter()
        .map(|(name, h)| {
            let choice = select_with(h.backend, crate::hypervisor::select::Qemu {
                accel: h.accel.or(config.qemu.accel),
                allow_tcg: config.qemu.allow_tcg,
            }, &caps);
            info!(handler = %name, configured = h.backend.name(), backend = choice.kind.name(), reason = %choice.reason, "runtime handler VMM");
            if let Some(w) = &choice.warning {
                warn!(handler = %name, "{w}");
            }
            let hypervisor: Arc<dyn Hypervisor> = match choice.kind {
                VmmKind::Qemu => Arc::new(Qemu::new(
                    QemuConfig {
                        accel: h.accel.or(config.qemu.accel),
                        ..config.qemu.clone()
                    },
                    caps.clone(),
                )),
                VmmKind::Builtin => {
                    if h.accel.is_some() {
                        warn!(handler = %name, "accel is a QEMU setting; the built-in VMM always uses KVM");
                    }
                    Arc::new(Builtin::new())
                }
            };
            if let Some(r) = &choice.refused {
                warn!(handler = %name, "pods refused: {r}");
            }
            let vmm = HandlerVmm {
                hypervisor,
                kind: choice.kind,
                refused: choice.refused.clone(),
                selection: choice,
            };
            (name.clone(), vmm)
        })
        .collect()
}

impl SandboxManager {
    /// Each runtime handler's VMM as chosen at start-up, with why, for Status's verbose
    /// info: backend, reason, whether QEMU runs in TCG, the warning and any refusal.
    pub fn handlers_info(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, h) in &self.inner.hypervisors {
            let s = &h.selection;
            out.insert(
                name.clone(),
                serde_json::json!({
                    "backend": s.kind.name(),
                    "reason": s.reason,
                    "tcg": s.tcg,
                    "warning": s.warning,
                    "refused": s.refused,
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// Whether `handler`'s pods may have user namespaces: QEMU's (the `layers` back-end
    /// shifts image owners for them); not yet the built-in VMM's.
    pub fn handler_has_user_namespaces(&self, handler: &str) -> bool {
        self.inner
            .hypervisors
            .get(handler)
            .is_some_and(|h| h.kind == VmmKind::Qemu)
    }
}

/// vCPUs and memory for a pod: from its limits, or the defaults, plus the overhead.
pub fn size_vm(
    config: &crate::config::SandboxConfig,
    cpu: Option<(i64, i64)>,
    mem: Option<i64>,
) -> (u32, u64) {
    let vcpus = match cpu {
        Some((quota, period)) if quota > 0 && period > 0 => {
            ((quota + period - 1) / period).clamp(1, 64) as u32
        }
        _ => config.default_vcpus,
    };
    let memory = match mem {
        Some(b) if b > 0 => (b as u64).div_ceil(1 << 20).max(64) + config.memory_overhead_mib,
        _ => config.default_memory_mib,
    };
    (vcpus, memory)
}
