//! What each kind of jailed process keeps (its `JailSpec`), for one pod.
//!
//! | kind | runs as | binds (besides /usr, read-only, and the host's top-level symlinks) |
//! |---|---|---|
//! | QEMU | the pod's uid, no capability (the group of /dev/kvm with KVM) | kernel and initramfs (ro); the vsock and virtio-fs socket folders (ro: it only connects); /sys/devices/system (ro: CPU and NUMA topology); /dev/null, zero, urandom (and kvm) |
//! | vsock back-end | the pod's uid, no capability | moatd's binary (ro); the pod's vsock socket folder |
//! | virtio-fs back-end | root, with `caps::for_shares` only | moatd's binary (ro); its share (ro for the layers); the virtio-fs socket folder |
//!
//! Every process also gets a read-only procfs of its own PID namespace (`root`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Bind, JailSpec, Kind};

/// The device nodes every jailed process may open.
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// The host's top-level directories that merged-/usr systems make symlinks into /usr.
const TOP_LEVEL: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// Confinement settings for the processes of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodJail {
    /// The sandbox id.
    pub sandbox: String,
    /// The pod's uid (and gid) for the processes that run without root.
    pub uid: u32,
    /// Where the jails' empty root directories are made (`<vm dir>/jail`).
    pub dir: PathBuf,
}

/// What QEMU needs of the host for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuNeeds {
    /// The QEMU binary, absolute.
    pub binary: PathBuf,
    /// Kernel and initramfs.
    pub images: Vec<PathBuf>,
    /// The folders of the vhost-user sockets it connects to.
    pub socket_dirs: Vec<PathBuf>,
    /// Whether it uses /dev/kvm.
    pub kvm: bool,
}

/// The system part of every root: /usr read-only (programs and libraries), the host's
/// top-level symlinks into it, and its real top-level library folders where it has some.
fn system() -> (Vec<Bind>, Vec<(PathBuf, PathBuf)>) {
    let mut binds = vec![Bind::program("/usr")];
    let mut links = Vec::new();
    for top in TOP_LEVEL {
        let p = Path::new(top);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    links.push((p.to_owned(), target));
                }
            }
            Ok(m) if m.is_dir() => binds.push(Bind::program(p)),
            _ => {}
        }
    }
    (binds, links)
}

fn devices() -> Vec<Bind> {
    DEVICES
        .iter()
        .filter(|d| Path::new(d).exists())
        .map(|d| Bind::device(*d))
        .collect()
}

/// A program's file bound where it is, unless /usr holds it already.
fn program_file(path: &Path) -> Option<Bind> {
    (!path.starts_with("/usr")).then(|| Bind::program(path))
}

/// moatd's own binary, as the back-ends run it.
pub fn moatd_binary() -> std::io::Result<PathBuf> {
    std::env::current_exe()?.canonicalize()
}

impl PodJail {
    /// A new, empty root directory for one process (`<dir>/<name>`).
    fn root(&self, name: &str) -> std::io::Result<PathBuf> {
        let root = self.dir.join(name);
        std::fs::create_dir_all(&root)?;
        Ok(root)
    }

    fn spec(&self, kind: Kind, root: PathBuf, own: Vec<Bind>) -> JailSpec {
        let (mut binds, symlinks) = system();
        binds.extend(devices());
        binds.extend(own);
        JailSpec {
            kind,
            sandbox: self.sandbox.clone(),
            root,
            binds,
            symlinks,
            user: Some((self.uid, self.uid)),
            groups: Vec::new(),
            caps: Vec::new(),
        }
    }

    /// QEMU's jail.
    pub fn qemu(&self, needs: &QemuNeeds) -> std::io::Result<JailSpec> {
        let mut own: Vec<Bind> = needs.images.iter().map(Bind::read_only).collect();
        own.extend(needs.socket_dirs.iter().map(Bind::read_only));
        own.push(Bind::read_only("/sys/devices/system"));
        // Firmware lives next to the binary (`<prefix>/share/qemu`): a QEMU outside /usr
        // brings its whole prefix.
        if !needs.binary.starts_with("/usr") {
            let prefix = needs.binary.parent().and_then(Path::parent);
            own.extend(prefix.map(Bind::program));
        }
        let mut spec = self.spec(Kind::Qemu, self.root("qemu")?, own);
        if needs.kvm {
            let kvm = Path::new("/dev/kvm");
            spec.groups.push(std::fs::metadata(kvm)?.gid());
            spec.binds.push(Bind::device(kvm));
        }
        Ok(spec)
    }

    /// The vsock back-end's jail: it listens in (and removes its sockets from) the pod's
    /// vsock folder and dials moatd's listeners there.
    pub fn vsock_backend(&self, socket_dir: &Path) -> std::io::Result<JailSpec> {
        let moatd = moatd_binary()?;
        let mut own = vec![Bind::writable(socket_dir)];
        own.extend(program_file(&moatd));
        Ok(self.spec(Kind::VsockBackend, self.root("vsock")?, own))
    }

    /// A virtio-fs back-end's jail (`index` tells a pod's shares apart): root, with only
    /// the capabilities its share needs.
    pub fn fs_backend(
        &self,
        index: usize,
        share: &Path,
        read_only: bool,
        socket_dir: &Path,
    ) -> std::io::Result<JailSpec> {
        let moatd = moatd_binary()?;
        let share = Bind {
            read_only,
            ..Bind::writable(share)
        };
        let mut own = vec![share, Bind::writable(socket_dir)];
        own.extend(program_file(&moatd));
        let mut spec = self.spec(Kind::FsBackend, self.root(&format!("fs-{index}"))?, own);
        spec.user = None;
        spec.caps = moat_vmm::jail::caps::for_shares([read_only]);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_vmm::jail::Cap;

    fn jail(d: &Path) -> PodJail {
        PodJail {
            sandbox: "s".into(),
            uid: 2_100_000_007,
            dir: d.join("jail"),
        }
    }

    #[test]
    fn qemu_runs_as_the_pod_uid_with_its_files_only() {
        let d = tempfile::tempdir().expect("tmp");
        let j = jail(d.path());
        let needs = QemuNeeds {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            images: vec!["/k".into(), "/i".into()],
            socket_dirs: vec!["/vm/vsock".into(), "/vm/fs".into()],
            kvm: false,
        };
        let s = j.qemu(&needs).expect("spec");
        assert_eq!(s.user, Some((j.uid, j.uid)));
        assert!(s.caps.is_empty());
        assert!(s.root.starts_with(d.path().join("jail")) && s.root.is_dir());
        let find = |p: &str| s.binds.iter().find(|b| b.path == Path::new(p)).cloned();
        assert_eq!(find("/usr"), Some(Bind::program("/usr")));
        assert_eq!(find("/k"), Some(Bind::read_only("/k")));
        assert!(
            s.binds.iter().all(|b| b.read_only || b.dev),
            "QEMU writes no file: its console is a pipe: {s:?}"
        );
        assert_eq!(find("/vm/vsock"), Some(Bind::read_only("/vm/vsock")));
        assert_eq!(find("/dev/null"), Some(Bind::device("/dev/null")));
        assert!(find("/dev/kvm").is_none());
        assert!(
            s.binds.iter().all(|b| !b.exec || b.read_only),
            "nothing both writable and executable: {s:?}"
        );
    }

    #[test]
    fn the_fs_backend_keeps_root_with_the_share_caps_only() {
        let d = tempfile::tempdir().expect("tmp");
        let j = jail(d.path());
        let s = j
            .fs_backend(1, Path::new("/vm/volumes"), false, Path::new("/vm/fs"))
            .expect("spec");
        assert_eq!(s.user, None);
        assert!(s.caps.contains(&Cap::Chown));
        assert!(!s.caps.contains(&Cap::Mknod) && !s.caps.contains(&Cap::Setfcap));
        assert!(s.binds.contains(&Bind::writable("/vm/volumes")));
        let ro = j
            .fs_backend(0, Path::new("/vm/layers"), true, Path::new("/vm/fs"))
            .expect("spec");
        assert!(ro.binds.contains(&Bind::read_only("/vm/layers")));
        assert!(!ro.caps.contains(&Cap::Chown));
        assert_ne!(ro.root, s.root);

        let v = j.vsock_backend(Path::new("/vm/vsock")).expect("spec");
        assert_eq!(v.user, Some((j.uid, j.uid)));
        assert!(v.binds.contains(&Bind::writable("/vm/vsock")));
    }
}
