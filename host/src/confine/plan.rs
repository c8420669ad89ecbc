//! What each kind of jailed process keeps (its `JailSpec`), for one pod.
//!
//! | kind | runs as | binds (besides /usr, read-only, and the host's top-level symlinks) |
//! |---|---|---|
//! | QEMU | the pod's uid, no capability (the group of /dev/kvm with KVM) | kernel and initramfs (ro); the vsock and virtio-fs socket folders (ro: it only connects); /sys/devices/system (ro: CPU and NUMA topology); /dev/null, zero, urandom (and kvm) |
//! | vsock back-end | the pod's uid, no capability | moatd's binary (ro); the pod's vsock socket folder |
//! | virtio-fs back-end | root, with `caps::for_shares` only | moatd's binary (ro); its share (ro for the layers); the virtio-fs socket folder |
//! | built-in VMM | root, with `caps::for_shares` only | moatd's binary (ro); kernel and initramfs (ro); its console log files; the vsock and control socket folders; its shares (ro for the layers); /dev/kvm |
//!
//! Every process also gets a read-only procfs of its own PID namespace (`root`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Bind, JailSpec, Kind, OutputLog};

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
    /// The most each process's output log keeps (`OutputLog`).
    pub output_max_bytes: u64,
}

/// What the built-in VMM needs of the host for one VM, every path canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmNeeds {
    /// The moatd binary it runs as (`moatd vmm`).
    pub program: PathBuf,
    /// Kernel, initramfs and its config file.
    pub images: Vec<PathBuf>,
    /// The files it writes (the console log and its tail segments), created beforehand.
    pub files: Vec<PathBuf>,
    /// The folders it makes sockets in (hybrid vsock, control socket).
    pub socket_dirs: Vec<PathBuf>,
    /// The virtio-fs shares: (directory, read-only).
    pub shares: Vec<(PathBuf, bool)>,
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

/// moatd's own binary, as the back-ends run it: found once (moatd pins it at start), so a
/// package upgrade that replaces the file under a running moatd (whose /proc/self/exe
/// then reads "<path> (deleted)") still finds a binary at its path for new pods.
pub fn moatd_binary() -> std::io::Result<PathBuf> {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = BINARY.get() {
        return Ok(p.clone());
    }
    let found = std::env::current_exe()?.canonicalize()?;
    Ok(BINARY.get_or_init(|| found).clone())
}

impl PodJail {
    /// A new, empty root directory for one process (`<dir>/<name>`).
    fn root(&self, name: &str) -> std::io::Result<PathBuf> {
        let root = self.dir.join(name);
        std::fs::create_dir_all(&root)?;
        Ok(root)
    }

    fn spec(&self, kind: Kind, root: PathBuf, own: Vec<Bind>, log: &Path) -> JailSpec {
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
            output: Some(self.output(log)),
        }
    }

    /// `path` as a confined process's output log, capped as the config says.
    fn output(&self, path: &Path) -> OutputLog {
        OutputLog {
            path: path.to_owned(),
            max_bytes: self.output_max_bytes,
        }
    }

    /// The built-in VMM's jail: root, with only the capabilities its shares need (its
    /// virtio-fs devices create files as the guest's users, as the back-end does), and
    /// /dev/kvm.
    pub fn vmm(&self, needs: &VmmNeeds, log: &Path) -> std::io::Result<JailSpec> {
        let mut own: Vec<Bind> = needs.images.iter().map(Bind::read_only).collect();
        own.extend(needs.files.iter().map(Bind::writable));
        own.extend(needs.socket_dirs.iter().map(Bind::writable));
        own.extend(needs.shares.iter().map(|(dir, read_only)| Bind {
            read_only: *read_only,
            ..Bind::writable(dir)
        }));
        own.push(Bind::device("/dev/kvm"));
        own.extend(program_file(&needs.program));
        let mut spec = self.spec(Kind::Vmm, self.root("vmm")?, own, log);
        spec.user = None;
        spec.caps = moat_vmm::jail::caps::for_shares(needs.shares.iter().map(|(_, ro)| *ro));
        Ok(spec)
    }

    /// QEMU's jail.
    pub fn qemu(&self, needs: &QemuNeeds, log: &Path) -> std::io::Result<JailSpec> {
        let mut own: Vec<Bind> = needs.images.iter().map(Bind::read_only).collect();
        own.extend(needs.socket_dirs.iter().map(Bind::read_only));
        own.push(Bind::read_only("/sys/devices/system"));
        // Firmware lives next to the binary (`<prefix>/share/qemu`): a QEMU outside /usr
        // brings its whole prefix.
        if !needs.binary.starts_with("/usr") {
            let prefix = needs.binary.parent().and_then(Path::parent);
            own.extend(prefix.map(Bind::program));
        }
        let mut spec = self.spec(Kind::Qemu, self.root("qemu")?, own, log);
        if needs.kvm {
            let kvm = Path::new("/dev/kvm");
            spec.groups.push(std::fs::metadata(kvm)?.gid());
            spec.binds.push(Bind::device(kvm));
        }
        Ok(spec)
    }

    /// The vsock back-end's jail: it listens in (and removes its sockets from) the pod's
    /// vsock folder and dials moatd's listeners there.
    pub fn vsock_backend(&self, socket_dir: &Path, log: &Path) -> std::io::Result<JailSpec> {
        let moatd = moatd_binary()?;
        let mut own = vec![Bind::writable(socket_dir)];
        own.extend(program_file(&moatd));
        Ok(self.spec(Kind::VsockBackend, self.root("vsock")?, own, log))
    }

    /// A virtio-fs back-end's jail (`index` tells a pod's shares apart): root, with only
    /// the capabilities its share needs.
    pub fn fs_backend(
        &self,
        index: usize,
        share: &Path,
        read_only: bool,
        socket_dir: &Path,
        log: &Path,
    ) -> std::io::Result<JailSpec> {
        let moatd = moatd_binary()?;
        let share = Bind {
            read_only,
            ..Bind::writable(share)
        };
        let mut own = vec![share, Bind::writable(socket_dir)];
        own.extend(program_file(&moatd));
        let root = self.root(&format!("fs-{index}"))?;
        let mut spec = self.spec(Kind::FsBackend, root, own, log);
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
            output_max_bytes: 1 << 20,
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
        let s = j.qemu(&needs, Path::new("/vm/vmm.log")).expect("spec");
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
            .fs_backend(
                1,
                Path::new("/vm/volumes"),
                false,
                Path::new("/vm/fs"),
                Path::new("/vm/fs-volumes.log"),
            )
            .expect("spec");
        assert_eq!(s.user, None);
        assert!(s.caps.contains(&Cap::Chown));
        assert!(!s.caps.contains(&Cap::Mknod) && !s.caps.contains(&Cap::Setfcap));
        assert!(s.binds.contains(&Bind::writable("/vm/volumes")));
        let ro = j
            .fs_backend(
                0,
                Path::new("/vm/layers"),
                true,
                Path::new("/vm/fs"),
                Path::new("/vm/fs-layers.log"),
            )
            .expect("spec");
        assert!(ro.binds.contains(&Bind::read_only("/vm/layers")));
        assert!(!ro.caps.contains(&Cap::Chown));
        assert_ne!(ro.root, s.root);

        let v = j
            .vsock_backend(Path::new("/vm/vsock"), Path::new("/vm/vsock.log"))
            .expect("spec");
        assert_eq!(v.user, Some((j.uid, j.uid)));
        assert!(v.binds.contains(&Bind::writable("/vm/vsock")));
        assert_eq!(
            v.output,
            Some(OutputLog {
                path: "/vm/vsock.log".into(),
                max_bytes: 1 << 20
            })
        );
    }

    #[test]
    fn the_vmm_keeps_root_with_its_files_shares_and_kvm() {
        let d = tempfile::tempdir().expect("tmp");
        let j = jail(d.path());
        let needs = VmmNeeds {
            program: "/opt/moat/moatd".into(),
            images: vec!["/k".into(), "/i".into()],
            files: vec!["/vm/console.log".into()],
            socket_dirs: vec!["/vm/vsock".into(), "/vm/api".into()],
            shares: vec![("/vm/layers".into(), true), ("/vm/volumes".into(), false)],
        };
        let s = j.vmm(&needs, Path::new("/vm/vmm.log")).expect("spec");
        assert_eq!((s.kind, s.user), (Kind::Vmm, None));
        assert!(s.caps.contains(&Cap::Chown) && s.caps.contains(&Cap::DacOverride));
        assert!(!s.caps.contains(&Cap::Mknod) && !s.caps.contains(&Cap::Setfcap));
        for b in [
            Bind::read_only("/k"),
            Bind::writable("/vm/console.log"),
            Bind::writable("/vm/api"),
            Bind::read_only("/vm/layers"),
            Bind::writable("/vm/volumes"),
            Bind::device("/dev/kvm"),
            Bind::program("/opt/moat/moatd"),
        ] {
            assert!(s.binds.contains(&b), "{b:?} in {s:?}");
        }
        assert!(
            s.binds.iter().all(|b| !b.exec || b.read_only),
            "nothing both writable and executable: {s:?}"
        );
        assert!(s.root.ends_with("jail/vmm") && s.root.is_dir());
    }
}
