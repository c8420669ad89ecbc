//! Which VMM runs a runtime handler's pods: a pure function of the configured backend and
//! what the host offers, so moatd logs the same choice and reason at start-up that
//! `moatd check` prints.

use super::{Accel, HostCaps};
use serde::{Deserialize, Serialize};

/// Which VMM runs a handler's pods.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Pick for this host.
    #[default]
    Auto,
    /// QEMU.
    Qemu,
    /// Moat's own VMM.
    Builtin,
}

impl Backend {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Qemu => "qemu",
            Backend::Builtin => "builtin",
        }
    }
}

/// What moatd says wherever a handler runs QEMU in TCG: start-up log, `moatd check`,
/// Status's verbose info.
pub const TCG_WARNING: &str = "QEMU runs this handler's guests in TCG (software emulation), which upstream QEMU does not treat as a security boundary: a guest that exploits a TCG bug runs code in the QEMU process on the host; use hardware KVM, or set qemu.allow_tcg = false to refuse such pods";

/// The VMM a handler's pods run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmKind {
    /// QEMU (`-M microvm`), KVM or TCG.
    Qemu,
    /// Moat's own VMM (`moatd vmm`), KVM only.
    Builtin,
}

impl VmmKind {
    /// The backend's name, as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Builtin => "builtin",
        }
    }
}

/// A handler's VMM and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The VMM.
    pub kind: VmmKind,
    /// Why this one, in words for a log line (after the configured backend's name).
    pub reason: String,
    /// Set when the choice will not boot Linux guests on this host (the operator asked
    /// for the built-in VMM on a host without hardware KVM), or when QEMU runs in TCG.
    pub warning: Option<String>,
    /// QEMU in TCG (software emulation).
    pub tcg: bool,
    /// Set when the handler may not run pods at all (TCG while `qemu.allow_tcg` is false).
    pub refused: Option<String>,
}

/// The TCG policy applied to a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qemu {
    /// The handler's acceleration (its own `accel`, else `qemu.accel`), if set.
    pub accel: Option<Accel>,
    /// `qemu.allow_tcg`.
    pub allow_tcg: bool,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            accel: None,
            allow_tcg: true,
        }
    }
}

/// `select`, then the TCG policy: a QEMU handler whose acceleration is (or falls back to)
/// TCG gets the TCG warning, and is refused when TCG is not allowed.
pub fn select_with(backend: Backend, qemu: Qemu, caps: &HostCaps) -> Selection {
    let mut s = select(backend, caps);
    if s.kind == VmmKind::Qemu && qemu.accel.unwrap_or_else(|| caps.best_accel()) == Accel::Tcg {
        s.tcg = true;
        s.warning = Some(TCG_WARNING.into());
        if !qemu.allow_tcg {
            s.refused = Some(
                "this handler's pods would run in QEMU's TCG emulation, and qemu.allow_tcg = false forbids it: run on a host with hardware KVM (VT-x/AMD-V) or allow TCG".into(),
            );
        }
    }
    s
}

/// Whether /dev/kvm can run ordinary Linux guests here.
fn hardware_kvm(caps: &HostCaps) -> bool {
    caps.kvm_device && caps.hardware_virt
}

/// Why this host has no hardware KVM.
fn no_hardware_kvm(caps: &HostCaps) -> &'static str {
    if !caps.kvm_device {
        "/dev/kvm is missing or cannot be opened"
    } else {
        "/dev/kvm is usable but the CPU has no vmx/svm flag (software-only KVM such as kvm_pvm, which cannot boot Linux)"
    }
}

/// Picks the VMM for a handler configured with `backend` on a host with `caps`: `qemu`
/// and `builtin` are taken as asked; `auto` is the built-in VMM where /dev/kvm has
/// hardware virtualization behind it, and QEMU (which falls back to TCG) otherwise.
pub fn select(backend: Backend, caps: &HostCaps) -> Selection {
    match backend {
        Backend::Qemu => Selection {
            kind: VmmKind::Qemu,
            reason: "the config asks for it".into(),
            warning: None,
            tcg: false,
            refused: None,
        },
        Backend::Builtin => Selection {
            kind: VmmKind::Builtin,
            reason: "the config asks for it".into(),
            warning: (!hardware_kvm(caps)).then(|| {
                format!(
                    "the built-in VMM needs KVM with hardware virtualization (VT-x or AMD-V), and here {}: it will not boot Linux guests on this host; use backend = \"auto\" or \"qemu\"",
                    no_hardware_kvm(caps)
                )
            }),
            tcg: false,
            refused: None,
        },
        Backend::Auto if hardware_kvm(caps) => Selection {
            kind: VmmKind::Builtin,
            reason: "/dev/kvm is usable and the CPU has hardware virtualization".into(),
            warning: None,
            tcg: false,
            refused: None,
        },
        Backend::Auto => Selection {
            kind: VmmKind::Qemu,
            reason: format!(
                "{}; QEMU runs guests in TCG unless qemu.accel says otherwise",
                no_hardware_kvm(caps)
            ),
            warning: None,
            tcg: false,
            refused: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(kvm_device: bool, hardware_virt: bool) -> HostCaps {
        HostCaps {
            kvm_device,
            hardware_virt,
            tsc_khz: None,
        }
    }

    #[test]
    fn auto_takes_the_builtin_vmm_only_with_hardware_kvm() {
        let s = select(Backend::Auto, &caps(true, true));
        assert_eq!(s.kind, VmmKind::Builtin);
        assert!(s.warning.is_none());
        assert!(s.reason.contains("hardware virtualization"), "{}", s.reason);

        let pvm = select(Backend::Auto, &caps(true, false));
        assert_eq!(pvm.kind, VmmKind::Qemu);
        assert!(pvm.reason.contains("kvm_pvm"), "{}", pvm.reason);
        assert!(pvm.warning.is_none());

        let none = select(Backend::Auto, &caps(false, true));
        assert_eq!(none.kind, VmmKind::Qemu);
        assert!(
            none.reason.contains("/dev/kvm is missing"),
            "{}",
            none.reason
        );
    }

    #[test]
    fn explicit_backends_are_kept_and_builtin_without_hardware_kvm_warns() {
        for c in [caps(true, true), caps(true, false), caps(false, false)] {
            let q = select(Backend::Qemu, &c);
            assert_eq!(q.kind, VmmKind::Qemu);
            assert!(q.warning.is_none());
            let b = select(Backend::Builtin, &c);
            assert_eq!(b.kind, VmmKind::Builtin);
            assert_eq!(b.warning.is_some(), !(c.kvm_device && c.hardware_virt));
        }
        let w = select(Backend::Builtin, &caps(true, false))
            .warning
            .expect("a warning without hardware virtualization");
        assert!(w.contains("will not boot Linux"), "{w}");
        assert_eq!(VmmKind::Builtin.name(), "builtin");
        assert_eq!(VmmKind::Qemu.name(), "qemu");
    }

    #[test]
    fn tcg_is_chosen_with_a_warning_and_refused_when_not_allowed() {
        let pvm = caps(true, false);
        let s = select_with(Backend::Auto, Qemu::default(), &pvm);
        assert!(s.tcg && s.refused.is_none());
        assert_eq!(s.warning.as_deref(), Some(TCG_WARNING));
        let strict = Qemu {
            accel: None,
            allow_tcg: false,
        };
        let s = select_with(Backend::Auto, strict, &pvm);
        assert!(
            s.refused
                .as_deref()
                .is_some_and(|r| r.contains("allow_tcg"))
        );
        // Hardware KVM: the built-in VMM, or QEMU with KVM; neither is TCG.
        let hw = caps(true, true);
        assert!(!select_with(Backend::Auto, strict, &hw).tcg);
        assert!(!select_with(Backend::Qemu, strict, &hw).tcg);
        // Unless the handler asks for TCG itself.
        let tcg = Qemu {
            accel: Some(Accel::Tcg),
            allow_tcg: false,
        };
        assert!(select_with(Backend::Qemu, tcg, &hw).refused.is_some());
    }
}
