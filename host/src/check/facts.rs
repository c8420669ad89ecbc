//! What `moatd check` reads from the host, gathered in one place so the judging
//! (`items`) stays pure and testable.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{BUILTIN_KERNEL_FILE, Config};

/// The CNI plugins Moat's networks use: the default bridge network (bridge, host-local,
/// portmap) and the pod's loopback.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];

/// A character device's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// No such file.
    Absent,
    /// There, but it cannot be opened read-write (the error).
    Unusable(String),
    /// Opens read-write.
    Usable,
}

impl Device {
    /// Opens `path` read-write to see whether it can be used.
    pub fn probe(path: &Path) -> Self {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(_) => Device::Usable,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Device::Absent,
            Err(e) => Device::Unusable(e.to_string()),
        }
    }
}

/// The cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2 mounted at /sys/fs/cgroup, with these controllers.
    V2(Vec<String>),
    /// cgroup v1 with v2 beside it at /sys/fs/cgroup/unified (these controllers).
    Hybrid(Vec<String>),
    /// cgroup v1 only (or none).
    V1,
}

/// How the built-in VMM's kernel was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSource {
    /// `sandbox.builtin_kernel` names it.
    Configured,
    /// `<guest_dir>/vmlinux-moat`.
    Minimal,
    /// No minimal kernel: the one QEMU boots.
    Common,
}

/// A file and whether it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFact {
    /// The path.
    pub path: PathBuf,
    /// It is a regular file.
    pub exists: bool,
}

impl FileFact {
    /// Looks at `path`.
    pub fn probe(path: PathBuf) -> Self {
        let exists = path.is_file();
        Self { path, exists }
    }
}

/// Everything `moatd check` judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// /dev/kvm.
    pub kvm: Device,
    /// The hardware virtualization flag in /proc/cpuinfo (`vmx`, `svm`), if any.
    pub hw_virt_flag: Option<&'static str>,
    /// The KVM modules loaded (`kvm_intel`, `kvm_amd`, `kvm_pvm`).
    pub kvm_modules: Vec<String>,
    /// /dev/vhost-vsock exists.
    pub vhost_vsock: bool,
    /// /dev/net/tun.
    pub tun: Device,
    /// The cgroup hierarchy.
    pub cgroups: Cgroups,
    /// Each of `CNI_PLUGINS` and where it was found in `cni.bin_dirs`.
    pub cni_plugins: Vec<(String, Option<PathBuf>)>,
    /// The default CNI network (`name from file`), or why there is none.
    pub cni_network: Result<String, String>,
    /// The guest kernel QEMU boots.
    pub kernel: FileFact,
    /// The guest initramfs.
    pub initramfs: FileFact,
    /// The kernel the built-in VMM boots, and how it was found.
    pub builtin_kernel: (FileFact, KernelSource),
    /// The first line of `<qemu.binary> --version`, or why it could not be run.
    pub qemu_version: Result<String, String>,
}

impl HostFacts {
    /// Reads this host, with the paths `config` names.
    pub fn probe(config: &Config) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let sandbox = &config.sandbox;
        let source = if sandbox.builtin_kernel.is_some() {
            KernelSource::Configured
        } else if sandbox.builtin_kernel() == sandbox.guest_dir.join(BUILTIN_KERNEL_FILE) {
            KernelSource::Minimal
        } else {
            KernelSource::Common
        };
        Self {
            kvm: Device::probe(Path::new("/dev/kvm")),
            hw_virt_flag: crate::hypervisor::hw_virt_flag(&cpuinfo),
            kvm_modules: ["kvm_intel", "kvm_amd", "kvm_pvm"]
                .into_iter()
                .filter(|m| Path::new("/sys/module").join(m).exists())
                .map(String::from)
                .collect(),
            vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
            tun: Device::probe(Path::new("/dev/net/tun")),
            cgroups: cgroups(Path::new("/sys/fs/cgroup")),
            cni_plugins: find_plugins(&config.cni.bin_dirs),
            cni_network: crate::network::cni_config::default_network(&config.cni.conf_dir)
                .map(|n| format!("{} from {}", n.name, n.file)),
            kernel: FileFact::probe(sandbox.kernel()),
            initramfs: FileFact::probe(sandbox.initramfs()),
            builtin_kernel: (FileFact::probe(sandbox.builtin_kernel()), source),
            qemu_version: cached_version(&config.qemu.binary),
        }
    }
}

/// The controllers a `cgroup.controllers` file lists.
pub fn controllers(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

fn cgroups(root: &Path) -> Cgroups {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok().map(|t| controllers(&t));
    if let Some(c) = read(root.join("cgroup.controllers")) {
        Cgroups::V2(c)
    } else if let Some(c) = read(root.join("unified/cgroup.controllers")) {
        Cgroups::Hybrid(c)
    } else {
        Cgroups::V1
    }
}

fn find_plugins(bin_dirs: &[PathBuf]) -> Vec<(String, Option<PathBuf>)> {
    use std::os::unix::fs::PermissionsExt;
    CNI_PLUGINS
        .iter()
        .map(|name| {
            let found = bin_dirs.iter().map(|d| d.join(name)).find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
            ((*name).to_owned(), found)
        })
        .collect()
}

/// `version(binary)`, remembered while the executable found on PATH keeps its size and
/// modification time: kubelet's Status calls probe the host every few seconds, and
/// starting QEMU for its version costs about 0.1 s.
fn cached_version(binary: &str) -> Result<String, String> {
    type Key = (PathBuf, u64, std::time::SystemTime);
    static SEEN: std::sync::Mutex<Option<(Key, String)>> = std::sync::Mutex::new(None);
    let key = resolve(binary).and_then(|p| {
        let m = std::fs::metadata(&p).ok()?;
        Some((p, m.len(), m.modified().ok()?))
    });
    let Some(key) = key else {
        return version(binary);
    };
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, v)) = seen.as_ref()
        && *k == key
    {
        return Ok(v.clone());
    }
    let v = version(binary)?;
    *seen = Some((key, v.clone()));
    Ok(v)
}

/// Where `binary` runs from: itself when it names a path, else the first match on PATH.
fn resolve(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Some(PathBuf::from(binary));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// The first line of `binary --version`.
fn version(binary: &str) -> Result<String, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {binary}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default().trim().to_owned();
    if !out.status.success() || first.is_empty() {
        return Err(format!(
            "{binary} --version failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_hierarchies_are_told_apart() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(cgroups(d.path()), Cgroups::V1);
        std::fs::create_dir(d.path().join("unified")).expect("mkdir");
        std::fs::write(d.path().join("unified/cgroup.controllers"), "").expect("w");
        assert_eq!(cgroups(d.path()), Cgroups::Hybrid(vec![]));
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io memory pids\n").expect("w");
        assert_eq!(
            cgroups(d.path()),
            Cgroups::V2(vec![
                "cpu".into(),
                "io".into(),
                "memory".into(),
                "pids".into()
            ])
        );
    }

    #[test]
    fn plugins_are_found_in_the_first_dir_that_has_them_executable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tmp");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for dir in [&a, &b] {
            std::fs::create_dir(dir).expect("mkdir");
        }
        let exe = |p: PathBuf, mode: u32| {
            std::fs::write(&p, "#!/bin/sh\n").expect("w");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        exe(a.join("bridge"), 0o644);
        exe(b.join("bridge"), 0o755);
        exe(a.join("loopback"), 0o755);
        let found = find_plugins(&[a.clone(), b.clone()]);
        let at = |n: &str| {
            found
                .iter()
                .find(|(p, _)| p == n)
                .and_then(|(_, w)| w.clone())
        };
        assert_eq!(at("bridge"), Some(b.join("bridge")), "not executable in a");
        assert_eq!(at("loopback"), Some(a.join("loopback")));
        assert_eq!(at("portmap"), None);
    }

    #[test]
    fn versions_come_from_the_binary_or_say_why_not() {
        assert!(
            version("/nonexistent/qemu")
                .expect_err("missing")
                .contains("cannot run")
        );
        assert!(version("false").is_err());
        let d = tempfile::tempdir().expect("tmp");
        let qemu = d.path().join("qemu");
        std::fs::write(
            &qemu,
            "#!/bin/sh\necho \"QEMU emulator version 7.2.15\"\necho Copyright\n",
        )
        .expect("w");
        std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let qemu = qemu.to_str().expect("utf-8 path");
        assert_eq!(version(qemu).as_deref(), Ok("QEMU emulator version 7.2.15"));
    }
}
