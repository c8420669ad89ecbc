//! The findings of `moatd check`, one pure function per item, from `HostFacts` and the
//! config.

use std::path::{Path, PathBuf};

use super::Finding;
use super::facts::{Cgroups, Device, FileFact, HostFacts, KernelSource};
use crate::config::{Backend, Config};
use crate::hypervisor::HostCaps;
use crate::hypervisor::select::{Selection, VmmKind, select_with};

/// What the host's KVM amounts to.
pub fn kvm(device: &Device, flag: Option<&str>, modules: &[String]) -> Finding {
    const ITEM: &str = "KVM";
    let pvm = modules.iter().any(|m| m == "kvm_pvm");
    match (device, flag) {
        (Device::Absent, _) => Finding::missing(
            ITEM,
            "no /dev/kvm: QEMU runs guests in TCG (slow) and the built-in VMM cannot run; enable VT-x/AMD-V (or nested virtualization) and load kvm_intel or kvm_amd",
            false,
        ),
        (Device::Unusable(e), _) => Finding::missing(
            ITEM,
            format!("/dev/kvm cannot be opened ({e}): run moatd as root or give it the kvm group"),
            false,
        ),
        (Device::Usable, Some(flag)) => Finding::ok(
            ITEM,
            format!("/dev/kvm usable, hardware virtualization ({flag} in /proc/cpuinfo)"),
        ),
        (Device::Usable, None) => Finding::warn(
            ITEM,
            format!(
                "/dev/kvm is software-only KVM ({}no vmx/svm in /proc/cpuinfo): it cannot boot Linux guests; QEMU runs them in TCG",
                if pvm { "kvm_pvm; " } else { "" }
            ),
            false,
        ),
    }
}

/// /dev/vhost-vsock: informational, Moat's vsock runs in user space.
pub fn vhost_vsock(present: bool) -> Finding {
    const WHY: &str = "not needed: Moat serves vsock in user space (hybrid vsock)";
    if present {
        Finding::ok("vhost-vsock", format!("/dev/vhost-vsock present; {WHY}"))
    } else {
        Finding::missing("vhost-vsock", format!("no /dev/vhost-vsock; {WHY}"), false)
    }
}

/// /dev/net/tun: the pod's network device is a tap; needed once a CNI network exists.
pub fn tun(device: &Device, network: bool) -> Finding {
    match device {
        Device::Usable => Finding::ok("tun", "/dev/net/tun usable (pod NICs are taps)"),
        Device::Absent => Finding::missing(
            "tun",
            "no /dev/net/tun: pods cannot get a network; `modprobe tun`",
            network,
        ),
        Device::Unusable(e) => Finding::missing(
            "tun",
            format!("/dev/net/tun cannot be opened ({e}): run moatd as root"),
            network,
        ),
    }
}

/// The cgroup hierarchy (kubelet's concern more than Moat's: informational).
pub fn cgroups(c: &Cgroups) -> Finding {
    match c {
        Cgroups::V2(ctrl) => Finding::ok("cgroup v2", format!("controllers: {}", ctrl.join(" "))),
        Cgroups::Hybrid(ctrl) => Finding::warn(
            "cgroup v2",
            format!(
                "hybrid hierarchy (v2 at /sys/fs/cgroup/unified, controllers: {}): kubelet works best on pure v2; boot with systemd.unified_cgroup_hierarchy=1",
                if ctrl.is_empty() {
                    "none".into()
                } else {
                    ctrl.join(" ")
                }
            ),
            false,
        ),
        Cgroups::V1 => Finding::warn(
            "cgroup v2",
            "no cgroup v2 at /sys/fs/cgroup (cgroup v1): kubelet works best on v2; boot with systemd.unified_cgroup_hierarchy=1",
            false,
        ),
    }
}

/// The default CNI network.
pub fn cni_network(network: &Result<String, String>) -> Finding {
    match network {
        Ok(n) => Finding::ok("CNI network", n.clone()),
        Err(why) => Finding::warn(
            "CNI network",
            format!(
                "{why}: pods get loopback only until kubelet sends the pod CIDR (moatd then writes a bridge network)"
            ),
            false,
        ),
    }
}

/// The CNI plugins; missing ones block pods once a CNI network exists.
pub fn cni_plugins(
    found: &[(String, Option<PathBuf>)],
    bin_dirs: &[PathBuf],
    network: bool,
) -> Finding {
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, at)| at.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let dirs = bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    if missing.is_empty() {
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        return Finding::ok("CNI plugins", format!("{} in {dirs}", names.join(", ")));
    }
    let detail = format!(
        "{} not in {dirs}: install containernetworking-plugins (Debian) or set cni.bin_dirs",
        missing.join(", ")
    );
    if network {
        Finding::missing("CNI plugins", detail, true)
    } else {
        Finding::warn("CNI plugins", detail, false)
    }
}

fn describe(f: &FileFact) -> String {
    let state = if f.exists { "" } else { " (missing)" };
    format!("{}{state}", f.path.display())
}

/// The guest kernel and initramfs: the initramfs every VM needs, the kernel the QEMU
/// handlers need.
pub fn guest_image(kernel: &FileFact, initramfs: &FileFact, qemu_used: bool) -> Finding {
    let detail = format!(
        "kernel {}, initramfs {}",
        describe(kernel),
        describe(initramfs)
    );
    if kernel.exists && initramfs.exists {
        return Finding::ok("guest image", detail);
    }
    Finding::missing(
        "guest image",
        format!("{detail}: build it with guest-image/build.sh or set sandbox.guest_dir"),
        !initramfs.exists || qemu_used,
    )
}

/// The kernel the built-in VMM boots.
pub fn builtin_kernel(
    kernel: &FileFact,
    source: KernelSource,
    guest_dir: &Path,
    used: bool,
) -> Finding {
    const ITEM: &str = "built-in kernel";
    let path = kernel.path.display();
    if !kernel.exists {
        let how = match source {
            KernelSource::Configured => "fix sandbox.builtin_kernel",
            KernelSource::Minimal => "rebuild it with guest-image/build-kernel.sh",
            KernelSource::Common => {
                "no vmlinux-moat either: build it with guest-image/build-kernel.sh"
            }
        };
        let unused = if used {
            ""
        } else {
            " (no handler uses the built-in VMM)"
        };
        return Finding::missing(ITEM, format!("{path} is missing; {how}{unused}"), used);
    }
    match source {
        KernelSource::Configured => Finding::ok(ITEM, format!("{path} (sandbox.builtin_kernel)")),
        KernelSource::Minimal => Finding::ok(ITEM, format!("{path} (minimal kernel)")),
        KernelSource::Common => {
            let detail = format!(
                "no vmlinux-moat in {}: the built-in VMM boots {path}; guest-image/build-kernel.sh builds the minimal one",
                guest_dir.display()
            );
            if used {
                Finding::warn(ITEM, detail, false)
            } else {
                Finding::ok(ITEM, format!("{detail} (no handler uses the built-in VMM)"))
            }
        }
    }
}

/// The QEMU binary and its version.
pub fn qemu(binary: &str, version: &Result<String, String>, used: bool) -> Finding {
    match version {
        Ok(v) => Finding::ok("QEMU", format!("{binary}: {v}")),
        Err(why) => {
            let unused = if used { "" } else { " (no handler uses QEMU)" };
            Finding::missing(
                "QEMU",
                format!("{why}: install qemu-system-x86 or set qemu.binary{unused}"),
                used,
            )
        }
    }
}

/// One runtime handler: the VMM it gets and why.
pub fn handler(name: &str, backend: Backend, choice: &Selection) -> Finding {
    let item = format!("handler {name}");
    let detail = format!(
        "{} -> {}: {}",
        backend.name(),
        choice.kind.name(),
        choice.reason
    );
    match (&choice.refused, &choice.warning) {
        (Some(r), _) => Finding::missing(item, format!("{detail}: {r}"), true),
        (None, None) => Finding::ok(item, detail),
        // TCG runs pods: a warning that does not make the host unusable.
        (None, Some(w)) => Finding::warn(item, format!("{detail}: {w}"), !choice.tcg),
    }
}

/// The whole report for `config` on a host with `facts`.
pub fn evaluate(config: &Config, facts: &HostFacts) -> super::Report {
    let caps = HostCaps {
        kvm_device: facts.kvm == Device::Usable,
        hardware_virt: facts.hw_virt_flag.is_some(),
        tsc_khz: None,
    };
    let handlers: Vec<(&String, Backend, Selection)> = config
        .runtime
        .handlers
        .iter()
        .map(|(name, h)| {
            let qemu = crate::hypervisor::select::Qemu {
                accel: h.accel.or(config.qemu.accel),
                allow_tcg: config.qemu.allow_tcg,
            };
            (name, h.backend, select_with(h.backend, qemu, &caps))
        })
        .collect();
    let uses = |k: VmmKind| handlers.iter().any(|(_, _, s)| s.kind == k);
    let network = facts.cni_network.is_ok();
    let (bk, source) = &facts.builtin_kernel;
    let mut findings = vec![
        kvm(&facts.kvm, facts.hw_virt_flag, &facts.kvm_modules),
        vhost_vsock(facts.vhost_vsock),
        tun(&facts.tun, network),
        cgroups(&facts.cgroups),
        cni_network(&facts.cni_network),
        cni_plugins(&facts.cni_plugins, &config.cni.bin_dirs, network),
        guest_image(&facts.kernel, &facts.initramfs, uses(VmmKind::Qemu)),
        builtin_kernel(
            bk,
            *source,
            &config.sandbox.guest_dir,
            uses(VmmKind::Builtin),
        ),
        qemu(
            &config.qemu.binary,
            &facts.qemu_version,
            uses(VmmKind::Qemu),
        ),
    ];
    findings.extend(handlers.iter().map(|(n, b, s)| handler(n, *b, s)));
    super::Report { findings }
}

#[cfg(test)]
mod tests {
    use super::super::Level;
    use super::*;
    use crate::config::HandlerConfig;

    fn file(p: &str, exists: bool) -> FileFact {
        FileFact {
            path: PathBuf::from(p),
            exists,
        }
    }

    /// This development host: kvm_pvm, hybrid cgroups, everything else in place.
    fn pvm_host() -> HostFacts {
        HostFacts {
            kvm: Device::Usable,
            hw_virt_flag: None,
            kvm_modules: vec!["kvm_pvm".into()],
            vhost_vsock: false,
            tun: Device::Usable,
            cgroups: Cgroups::Hybrid(vec![]),
            cni_plugins: ["bridge", "host-local", "loopback", "portmap"]
                .iter()
                .map(|n| ((*n).to_owned(), Some(PathBuf::from("/usr/lib/cni").join(n))))
                .collect(),
            cni_network: Err("no CNI network config found in /etc/cni/net.d".into()),
            kernel: file("/g/vmlinux", true),
            initramfs: file("/g/initramfs.cpio", true),
            builtin_kernel: (file("/g/vmlinux", true), KernelSource::Common),
            qemu_version: Ok("QEMU emulator version 7.2.15".into()),
        }
    }

    fn with_handler(backend: Backend) -> Config {
        let mut c = Config::default();
        c.runtime.handlers.insert(
            "moat".into(),
            HandlerConfig {
                backend,
                accel: None,
            },
        );
        c
    }

    fn level(r: &super::super::Report, item: &str) -> (Level, bool) {
        let f = r
            .findings
            .iter()
            .find(|f| f.item == item)
            .unwrap_or_else(|| panic!("no {item} in {r:?}"));
        (f.level, f.blocking)
    }

    #[test]
    fn kvm_kinds_are_told_apart() {
        let pvm = kvm(&Device::Usable, None, &["kvm_pvm".into()]);
        assert_eq!(pvm.level, Level::Warn);
        assert!(
            pvm.detail.contains("kvm_pvm") && pvm.detail.contains("cannot boot Linux"),
            "{}",
            pvm.detail
        );
        let hw = kvm(&Device::Usable, Some("vmx"), &["kvm_intel".into()]);
        assert_eq!(hw.level, Level::Ok);
        assert!(hw.detail.contains("vmx"));
        assert_eq!(kvm(&Device::Absent, Some("svm"), &[]).level, Level::Missing);
        let denied = kvm(&Device::Unusable("Permission denied".into()), None, &[]);
        assert!(denied.detail.contains("Permission denied"));
    }

    #[test]
    fn a_pvm_host_runs_auto_handlers_on_qemu() {
        let r = evaluate(&with_handler(Backend::Auto), &pvm_host());
        assert!(r.pods_can_run(), "{r:?}");
        let h = r
            .findings
            .iter()
            .find(|f| f.item == "handler moat")
            .expect("handler");
        assert!(h.detail.starts_with("auto -> qemu"), "{}", h.detail);
        assert_eq!(level(&r, "KVM"), (Level::Warn, false));
        assert_eq!(level(&r, "CNI network"), (Level::Warn, false));
        assert_eq!(level(&r, "built-in kernel"), (Level::Ok, false));
    }

    #[test]
    fn builtin_without_hardware_kvm_blocks_and_auto_with_it_picks_builtin() {
        let r = evaluate(&with_handler(Backend::Builtin), &pvm_host());
        assert!(!r.pods_can_run());
        assert_eq!(level(&r, "handler moat"), (Level::Warn, true));
        assert_eq!(
            level(&r, "built-in kernel"),
            (Level::Warn, false),
            "common kernel"
        );

        let mut hw = pvm_host();
        hw.hw_virt_flag = Some("vmx");
        hw.builtin_kernel = (file("/g/vmlinux-moat", false), KernelSource::Minimal);
        hw.qemu_version = Err("cannot run qemu-system-x86_64: not found".into());
        let r = evaluate(&with_handler(Backend::Auto), &hw);
        assert_eq!(level(&r, "handler moat"), (Level::Ok, false));
        assert_eq!(level(&r, "QEMU"), (Level::Missing, false), "unused");
        assert_eq!(level(&r, "built-in kernel"), (Level::Missing, true));
        assert!(!r.pods_can_run());
    }

    #[test]
    fn networking_blocks_only_once_a_cni_network_exists() {
        let mut h = pvm_host();
        h.cni_plugins[3].1 = None;
        h.tun = Device::Absent;
        let r = evaluate(&with_handler(Backend::Qemu), &h);
        assert_eq!(level(&r, "CNI plugins"), (Level::Warn, false));
        assert_eq!(level(&r, "tun"), (Level::Missing, false));
        assert!(r.pods_can_run());
        h.cni_network = Ok("moat from /etc/cni/net.d/10-moat.conflist".into());
        let r = evaluate(&with_handler(Backend::Qemu), &h);
        assert_eq!(level(&r, "CNI plugins"), (Level::Missing, true));
        assert_eq!(level(&r, "tun"), (Level::Missing, true));
        let plugins = r
            .findings
            .iter()
            .find(|f| f.item == "CNI plugins")
            .expect("plugins");
        assert!(
            plugins
                .detail
                .starts_with("portmap not in /usr/lib/cni:/opt/cni/bin"),
            "{}",
            plugins.detail
        );
    }

    #[test]
    fn a_missing_guest_image_or_qemu_blocks_qemu_handlers() {
        let mut h = pvm_host();
        h.kernel.exists = false;
        let r = evaluate(&with_handler(Backend::Qemu), &h);
        assert_eq!(level(&r, "guest image"), (Level::Missing, true));
        let mut h = pvm_host();
        h.qemu_version = Err("cannot run qemu-system-x86_64".into());
        let r = evaluate(&with_handler(Backend::Auto), &h);
        assert_eq!(level(&r, "QEMU"), (Level::Missing, true));
        assert_eq!(level(&r, "vhost-vsock"), (Level::Missing, false));
    }
}
