//! One sandbox's VM: its run directory, the device backend processes (for a VMM that does
//! not serve its devices itself), the VMM, the wait for the agent's announce, and the
//! teardown that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracing::{info, warn};

use super::error::SandboxError;
use crate::guest as agent;
use crate::hypervisor::{FsShare, Hypervisor, VmProcess, VmSpec};

/// The guest's vsock CID. Each VM has its own vsock device and backend, so every guest can
/// use the same one.
pub const GUEST_CID: u64 = 3;

/// The files of one sandbox VM, under `<run_dir>/vm/<short id>/` (short, because Unix
/// socket paths are limited to 108 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The directory.
    pub dir: PathBuf,
}

impl VmPaths {
    /// The paths for sandbox `id` under moatd's run dir.
    pub fn new(run_dir: &Path, id: &str) -> Self {
        Self {
            dir: run_dir.join("vm").join(&id[..12.min(id.len())]),
        }
    }
    /// The folder of the vsock sockets: the vsock back-end's vhost-user socket, the
    /// hybrid-vsock socket and moatd's listeners for guest connections. Owned by the
    /// pod's uid when the back-end is confined (see `confine::uid`).
    pub fn vsock_dir(&self) -> PathBuf {
        self.dir.join("vsock")
    }
    /// The folder of the virtio-fs back-ends' vhost-user sockets.
    pub fn fs_dir(&self) -> PathBuf {
        self.dir.join("fs")
    }
    /// Where the jails' (empty) root directories are made.
    pub fn jail_dir(&self) -> PathBuf {
        self.dir.join("jail")
    }
    /// The vhost-user socket QEMU connects to.
    pub fn vhost_socket(&self) -> PathBuf {
        self.vsock_dir().join("v.sock")
    }
    /// The hybrid-vsock Unix socket.
    pub fn vsock(&self) -> PathBuf {
        self.vsock_dir().join("vsock")
    }
    /// Where guest connections to host port `port` arrive.
    pub fn vsock_port(&self, port: u32) -> PathBuf {
        self.vsock_dir().join(format!("vsock_{port}"))
    }
    /// The vhost-user socket of the `layers` virtio-fs backend.
    pub fn fs_socket(&self) -> PathBuf {
        self.fs_dir().join("fs.sock")
    }
    /// The virtio-fs backend's output.
    pub fn fs_log(&self) -> PathBuf {
        self.dir.join("fs-backend.log")
    }
    /// The host side of the read-only `layers` share: read-only binds of the layer
    /// snapshots this pod's containers use, and nothing else.
    pub fn layers(&self) -> PathBuf {
        self.dir.join("layers")
    }
    /// The host side of the read-write `volumes` share.
    pub fn volumes(&self) -> PathBuf {
        self.dir.join("volumes")
    }
    /// The vhost-user socket of the `volumes` virtio-fs backend.
    pub fn volumes_socket(&self) -> PathBuf {
        self.fs_dir().join("fsv.sock")
    }
    /// Unmounts the volumes, then deletes the whole directory. Nothing is deleted while a
    /// host path is still mounted under it.
    pub fn remove(&self) {
        let released = crate::volumes::release(&self.layers(), "")
            .and_then(|()| crate::volumes::release(&self.volumes(), ""));
        match released {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "VM dir kept: volumes still mounted")
            }
        }
    }
    /// What the jails of this VM's processes said about how they ended (their
    /// `moatd jail:` lines: a seccomp kill, for one), from the processes' logs, which go
    /// with the VM directory.
    pub fn jail_reports(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") || path == self.console_log() {
                continue;
            }
            // The jail's lines are its last words; a log's tail is enough.
            let text = tail(&path, 16 * 1024);
            out.extend(
                text.lines()
                    .filter(|l| l.starts_with("moatd jail:"))
                    .map(str::to_owned),
            );
        }
        out
    }
    /// The guest console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The VMM's output.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// The vsock backend's output.
    pub fn backend_log(&self) -> PathBuf {
        self.dir.join("vsock-backend.log")
    }
}

/// A booted VM with a live agent.
pub struct RunningVm {
    /// The VMM process.
    pub vmm: VmProcess,
    /// The device backend processes; none when the VMM serves its devices in-process.
    pub backends: DeviceBackends,
    /// Its files.
    pub paths: VmPaths,
}

/// The vhost-user device backend processes of one VM (QEMU's; the built-in VMM has none).
#[derive(Debug, Default)]
pub struct DeviceBackends {
    /// The vsock backend.
    pub vsock: Option<VmProcess>,
    /// The virtio-fs backends (image layers, volumes).
    pub fs: Vec<VmProcess>,
}

impl DeviceBackends {
    /// Each process, with what it is.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &VmProcess)> {
        let vsock = self.vsock.iter().map(|p| ("vsock backend", p));
        vsock.chain(self.fs.iter().map(|p| ("virtio-fs backend", p)))
    }

    /// Stops every process: SIGTERM, then SIGKILL after `grace`.
    pub async fn terminate(&self, grace: Duration) {
        for (what, p) in self.iter() {
            if let Err(e) = p.terminate(grace).await {
                warn!(pid = p.pid(), error = %e, "could not stop the {what}");
            }
        }
    }
}

/// How to boot a VM.
pub struct LaunchSpec<'a> {
    /// The sandbox id.
    pub id: &'a str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Kernel.
    pub kernel: &'a Path,
    /// Initramfs.
    pub initramfs: &'a Path,
    /// Extra kernel arguments.
    pub kernel_args: Vec<String>,
    /// Deadline for boot up to a healthy agent.
    pub boot_timeout: Duration,
    /// Give the VM the read-only `layers` share (the pod's image layers).
    pub share_layers: bool,
    /// The deadline of each call into the agent.
    pub agent_timeout: Duration,
    /// The pod's network device, if it has a network.
    pub net: Option<crate::hypervisor::NetDevice>,
    /// The kernel modules the guest loads on demand, bound read-only into the `layers`
    /// share as `modules/` (skipped when the directory is missing: a kernel with
    /// everything built in has none).
    pub modules: Option<&'a Path>,
    /// Confine the VMM and its back-ends (`confine`), when the config says so.
    pub confinement: Option<crate::confine::ConfinementConfig>,
    /// The most the console log keeps on disk.
    pub console_log_max_bytes: u64,
    /// The pod's user namespace: the `layers` back-end reports owners shifted by it.
    pub userns: Option<&'a crate::userns::UserNamespace>,
}

/// The virtio-fs tag of the image layers share, and where the agent mounts it.
pub const LAYERS_TAG: &str = "layers";
/// Where the guest mounts the layers share.
pub const LAYERS_MOUNT: &str = "/run/moat/layers";

async fn spawn_backend(
    args: &[&std::ffi::OsStr],
    log: &Path,
    socket: &Path,
    what: &str,
    id: &str,
    jail: Option<crate::confine::JailSpec>,
) -> Result<VmProcess, SandboxError> {
    let exe = crate::confine::plan::moatd_binary()
        .map_err(|e| SandboxError::io("find the moatd binary", e))?;
    let cmd = match &jail {
        Some(spec) => {
            let args = args.iter().map(|a| a.to_os_string());
            crate::confine::wrap(spec, exe, args)
                .map_err(|e| SandboxError::io(format!("confine the {what}"), e))?
        }
        None => {
            let mut cmd = Command::new(exe);
            cmd.args(args);
            cmd
        }
    };
    let p =
        VmProcess::spawn(cmd, log).map_err(|e| SandboxError::io(format!("start the {what}"), e))?;
    wait_for(Duration::from_secs(10), || socket.exists() || p.exited()).await;
    if !socket.exists() {
        let _ = p.terminate(Duration::from_secs(1)).await;
        let out = std::fs::read_to_string(log).unwrap_or_default();
        if p.exited() {
            return Err(SandboxError::Agent {
                id: id.into(),
                detail: format!("the {what} ended at start-up: {}", out.trim()),
            });
        }
        return Err(SandboxError::DeadlineMissed {
            id: id.into(),
            what: format!("the {what} listening ({})", out.trim()),
            secs: 10,
            console: log.display().to_string(),
        });
    }
    Ok(p)
}

/// How long a launch's phases took.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaunchTimes {
    /// The device back-ends and the VMM started.
    pub vmm_start: Duration,
    /// From the VMM's start to the agent's health answer: the kernel and init.
    pub kernel_boot: Duration,
}

/// Boots the VM and waits for its agent. On any failure everything started is torn down.
pub async fn launch(
    hypervisor: &dyn Hypervisor,
    paths: VmPaths,
    spec: LaunchSpec<'_>,
) -> Result<(RunningVm, agent::GuestClient, LaunchTimes), SandboxError> {
    paths.remove();
    for d in [
        paths.volumes(),
        paths.layers(),
        paths.vsock_dir(),
        paths.fs_dir(),
    ] {
        std::fs::create_dir_all(d).map_err(|e| SandboxError::io("create the VM run dir", e))?;
    }
    for share in [paths.volumes(), paths.layers()] {
        if let Err(e) = crate::volumes::mount_share_root(&share) {
            paths.remove();
            return Err(SandboxError::io(
                "mount a share's root",
                std::io::Error::other(e.to_string()),
            ));
        }
    }
    let jail = match pod_jail(&paths, &spec) {
        Ok(j) => j,
        Err(e) => {
            paths.remove();
            return Err(SandboxError::io("confine the pod's processes", e));
        }
    };
    if let Some(m) = spec.modules.filter(|m| m.is_dir()) {
        let target = paths.layers().join(crate::config::MODULES_DIR);
        if let Err(e) = crate::volumes::bind_read_only(m, &target) {
            paths.remove();
            return Err(SandboxError::io(
                "share the on-demand kernel modules",
                std::io::Error::other(e.to_string()),
            ));
        }
    }
    let result = launch_inner(hypervisor, &paths, &spec, jail.as_ref()).await;
    if let Err(e) = &result {
        // The console is the first thing anyone needs: put its tail in moatd's log.
        // (The newest lines: a guest that floods its console leaves its head behind.)
        let console = moat_devices::console_log::read_tail(&paths.console_log(), 64 << 10)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let tail: String = console
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        warn!(sandbox = %spec.id, error = %e, console = %tail, "VM boot failed; tearing it down");
        paths.remove();
    }
    result
}

/// The confinement of a VM, when the spec asks for it: a pod uid (owning the vsock socket
/// folder, 0700) and the jails' folder.
fn pod_jail(
    paths: &VmPaths,
    spec: &LaunchSpec<'_>,
) -> std::io::Result<Option<crate::confine::PodJail>> {
    use std::os::unix::fs::PermissionsExt;
    let Some((range, output_max_bytes)) = spec
        .confinement
        .as_ref()
        .and_then(|c| Some((c.uid_range()?, c.output_log_max_bytes)))
    else {
        return Ok(None);
    };
    let vsock = paths.vsock_dir();
    std::fs::set_permissions(&vsock, std::fs::Permissions::from_mode(0o700))?;
    let vm_root = paths.dir.parent().unwrap_or(&paths.dir);
    let uid = crate::confine::uid::allocate(vm_root, &vsock, spec.id, range)?;
    std::fs::create_dir_all(paths.jail_dir())?;
    info!(sandbox = %spec.id, uid, "pod processes confined as this uid");
    Ok(Some(crate::confine::PodJail {
        sandbox: spec.id.to_owned(),
        uid,
        dir: paths.jail_dir(),
        output_max_bytes,
    }))
}

/// The virtio-fs shares of a VM: the read-only image layers (when asked for) and the
/// read-write volumes.
fn fs_shares(paths: &VmPaths, share_layers: bool) -> Vec<FsShare> {
    let mut shares = Vec::new();
    if share_layers {
        shares.push(FsShare {
            tag: LAYERS_TAG.into(),
            shared_dir: paths.layers(),
            read_only: true,
            vhost_socket: paths.fs_socket(),
        });
    }
    shares.push(FsShare {
        tag: crate::volumes::VOLUMES_TAG.into(),
        shared_dir: paths.volumes(),
        read_only: false,
        vhost_socket: paths.volumes_socket(),
    });
    shares
}

/// Starts the vhost-user backends a VMM without in-process devices connects to: vsock,
/// then one per share. On a failure, those already started are stopped.
async fn spawn_backends(
    paths: &VmPaths,
    shares: &[FsShare],
    id: &str,
    jail: Option<&crate::confine::PodJail>,
    userns: Option<&crate::userns::UserNamespace>,
) -> Result<DeviceBackends, SandboxError> {
    use moat_devices::fs::owners::format_ranges;
    let plan_err = |e| SandboxError::io("plan the back-ends' confinement", e);
    let (vhost, vsock) = (paths.vhost_socket(), paths.vsock());
    let cid = GUEST_CID.to_string();
    let vsock_backend = spawn_backend(
        &[
            "vsock-backend".as_ref(),
            "--socket".as_ref(),
            vhost.as_os_str(),
            "--uds-path".as_ref(),
            vsock.as_os_str(),
            "--guest-cid".as_ref(),
            cid.as_ref(),
        ],
        &paths.backend_log(),
        &vhost,
        "vsock backend",
        id,
        jail.map(|j| j.vsock_backend(&paths.vsock_dir(), &paths.backend_log()))
            .transpose()
            .map_err(plan_err)?,
    )
    .await?;
    let mut backends = DeviceBackends {
        vsock: Some(vsock_backend),
        fs: Vec::new(),
    };
    for (i, share) in shares.iter().enumerate() {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "fs-backend".as_ref(),
            "--socket".as_ref(),
            share.vhost_socket.as_os_str(),
            "--shared-dir".as_ref(),
            share.shared_dir.as_os_str(),
        ];
        if share.read_only {
            args.push("--read-only".as_ref());
        }
        // Image layers seen from the pod's user namespace keep the image's owners.
        let maps = userns
            .filter(|_| share.read_only)
            .map(|u| u.owners())
            .map(|o| (format_ranges(&o.uids), format_ranges(&o.gids)));
        if let Some((uids, gids)) = &maps {
            for (flag, ranges) in [("--uid-map", uids), ("--gid-map", gids)] {
                args.push(std::ffi::OsStr::new(flag));
                args.push(std::ffi::OsStr::new(ranges.as_str()));
            }
        }
        let log = paths.dir.join(format!("fs-{}.log", share.tag));
        let spawned = match jail
            .map(|j| {
                let dir = &share.shared_dir;
                j.fs_backend(i, dir, share.read_only, &paths.fs_dir(), &log)
            })
            .transpose()
        {
            Ok(spec) => {
                let what = "virtio-fs backend";
                spawn_backend(&args, &log, &share.vhost_socket, what, id, spec).await
            }
            Err(e) => Err(plan_err(e)),
        };
        // QEMU connects to the socket as the pod's uid.
        let spawned = spawned.and_then(|p| match jail {
            Some(j) => std::os::unix::fs::lchown(&share.vhost_socket, Some(j.uid), Some(j.uid))
                .map(|()| p)
                .map_err(|e| SandboxError::io("hand the virtio-fs socket to the pod's uid", e)),
            None => Ok(p),
        });
        match spawned {
            Ok(p) => backends.fs.push(p),
            Err(e) => {
                backends.terminate(Duration::from_secs(1)).await;
                return Err(e);
            }
        }
    }
    Ok(backends)
}

async fn launch_inner(
    hypervisor: &dyn Hypervisor,
    paths: &VmPaths,
    spec: &LaunchSpec<'_>,
    jail: Option<&crate::confine::PodJail>,
) -> Result<(RunningVm, agent::GuestClient, LaunchTimes), SandboxError> {
    let begun = std::time::Instant::now();
    let id = spec.id.to_owned();
    let announce_path = paths.vsock_port(agent::ANNOUNCE_PORT);
    let announce = tokio::net::UnixListener::bind(&announce_path)
        .map_err(|e| SandboxError::io("listen for the agent's announce", e))?;
    if let Some(j) = jail {
        // The confined vsock back-end dials it as the pod's uid.
        std::os::unix::fs::lchown(&announce_path, Some(j.uid), Some(j.uid))
            .map_err(|e| SandboxError::io("hand the announce socket to the pod's uid", e))?;
    }
    let fs_shares = fs_shares(paths, spec.share_layers);
    let backends = if hypervisor.devices_in_process() {
        DeviceBackends::default()
    } else {
        spawn_backends(paths, &fs_shares, &id, jail, spec.userns).await?
    };
    let vm_spec = VmSpec {
        id: id.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        kernel: spec.kernel.to_owned(),
        initramfs: spec.initramfs.to_owned(),
        kernel_args: spec.kernel_args.clone(),
        run_dir: paths.dir.clone(),
        vsock_uds: paths.vsock(),
        vsock_vhost_socket: paths.vhost_socket(),
        guest_cid: GUEST_CID,
        fs_shares,
        console_log: paths.console_log(),
        vmm_log: paths.vmm_log(),
        net: spec.net.clone(),
        jail: jail.cloned(),
        console_log_max_bytes: spec.console_log_max_bytes,
    };
    let vmm = match hypervisor.boot(&vm_spec) {
        Ok(v) => v,
        Err(source) => {
            backends.terminate(Duration::from_secs(1)).await;
            return Err(SandboxError::Hypervisor { id, source });
        }
    };
    let vm = RunningVm {
        vmm,
        backends,
        paths: paths.clone(),
    };
    let started = std::time::Instant::now();
    let vmm_start = begun.elapsed();
    let exited = async { while !vm.vmm.wait_timeout(Duration::from_secs(3600)).await {} };
    let ready = tokio::select! {
        r = tokio::time::timeout(spec.boot_timeout, agent::wait_announce(&announce)) => Some(r),
        _ = exited => None,
    };
    let fail = |what: String| SandboxError::DeadlineMissed {
        id: id.clone(),
        what,
        secs: spec.boot_timeout.as_secs(),
        console: "in moatd's log".into(),
    };
    match ready {
        Some(Ok(Ok(line))) => {
            info!(sandbox = %id, ms = started.elapsed().as_millis() as u64, %line, "agent announced")
        }
        Some(Ok(Err(e))) => {
            teardown(&vm).await;
            return Err(SandboxError::Agent {
                id,
                detail: format!("announce: {e}"),
            });
        }
        Some(Err(_)) => {
            teardown(&vm).await;
            return Err(fail("the guest agent's announce".into()));
        }
        None => {
            let log = std::fs::read_to_string(paths.vmm_log()).unwrap_or_default();
            teardown(&vm).await;
            return Err(SandboxError::Agent {
                id,
                detail: format!("the VMM exited during boot: {}", log.trim()),
            });
        }
    }
    let call_timeout = Duration::from_secs(10);
    let client = async {
        let c = agent::GuestClient::connect(&paths.vsock(), spec.agent_timeout)
            .await
            .map_err(|e| e.to_string())?;
        c.health().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(c)
    };
    match tokio::time::timeout(call_timeout, client).await {
        Ok(Ok(c)) => Ok((
            vm,
            c,
            LaunchTimes {
                vmm_start,
                kernel_boot: started.elapsed(),
            },
        )),
        Ok(Err(detail)) => {
            teardown(&vm).await;
            Err(SandboxError::Agent { id, detail })
        }
        Err(_) => {
            teardown(&vm).await;
            Err(fail("the agent's health answer".into()))
        }
    }
}

/// The last `max` bytes of the file at `path` (lossy UTF-8; empty when unreadable).
fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// Kills the VMM, then its device backends, and waits for each.
pub async fn teardown(vm: &RunningVm) {
    if let Err(e) = vm.vmm.terminate(Duration::from_secs(5)).await {
        warn!(pid = vm.vmm.pid(), error = %e, "could not stop the vmm");
    }
    vm.backends.terminate(Duration::from_secs(5)).await;
}

/// The processes (other than this one) whose command line names a path in the VM
/// directory `dir`: every process moatd starts for a VM does (the jails' specs, the
/// back-ends' sockets, QEMU's sockets and images, the built-in VMM's config), so this finds
/// what a boot cut short by moatd's death left running, before any pid was recorded.
pub fn processes_in(dir: &Path) -> Vec<VmProcess> {
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .filter_map(|pid| VmProcess::adopt(pid as i32).ok())
        .collect()
}

/// Takes hold of a sandbox's processes after a moatd restart; a pid that is gone or that
/// now belongs to another program gives `None`.
pub fn adopt(pid: i32, id: &str) -> Option<VmProcess> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&cmdline);
    let short = &id[..12.min(id.len())];
    if !(text.contains(id) || text.contains(short)) {
        return None;
    }
    VmProcess::adopt(pid).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_stay_short() {
        let p = VmPaths::new(Path::new("/run/moat"), &"f".repeat(64));
        assert_eq!(p.dir, PathBuf::from("/run/moat/vm/ffffffffffff"));
        assert_eq!(
            p.vsock_port(1025),
            PathBuf::from("/run/moat/vm/ffffffffffff/vsock/vsock_1025")
        );
        assert!(p.vsock_port(1025).as_os_str().len() < 108);
    }

    #[test]
    fn shares_are_layers_read_only_then_volumes_read_write() {
        let p = VmPaths::new(Path::new("/run/moat"), "abc");
        let tags = |v: Vec<FsShare>| -> Vec<(String, bool)> {
            v.into_iter().map(|s| (s.tag, s.read_only)).collect()
        };
        assert_eq!(
            tags(fs_shares(&p, true)),
            vec![("layers".into(), true), ("volumes".into(), false)]
        );
        assert_eq!(tags(fs_shares(&p, false)), vec![("volumes".into(), false)]);
        let s = fs_shares(&p, true);
        assert_eq!(s[0].shared_dir, p.layers());
        assert_eq!(s[0].vhost_socket, p.fs_socket());
        assert_eq!(s[1].vhost_socket, p.volumes_socket());
    }

    /// A VMM that serves its devices itself and exits at once, keeping the spec it got.
    #[derive(Debug, Default)]
    struct InProcess {
        spec: std::sync::Mutex<Option<VmSpec>>,
    }

    impl Hypervisor for InProcess {
        fn name(&self) -> &'static str {
            "test"
        }
        fn devices_in_process(&self) -> bool {
            true
        }
        fn boot(&self, spec: &VmSpec) -> Result<VmProcess, crate::hypervisor::HypervisorError> {
            *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec.clone());
            Ok(VmProcess::spawn(Command::new("true"), &spec.vmm_log)?)
        }
    }

    #[tokio::test]
    async fn a_vmm_with_in_process_devices_gets_no_backend_processes() {
        let d = tempfile::tempdir().expect("tmp");
        let paths = VmPaths::new(d.path(), "0123456789abcdef");
        let hv = InProcess::default();
        let started = std::time::Instant::now();
        let r = launch(
            &hv,
            paths.clone(),
            LaunchSpec {
                id: "0123456789abcdef",
                vcpus: 1,
                memory_mib: 128,
                kernel: Path::new("/k"),
                initramfs: Path::new("/i"),
                kernel_args: vec![],
                boot_timeout: Duration::from_secs(30),
                share_layers: true,
                agent_timeout: Duration::from_secs(1),
                net: None,
                modules: None,
                confinement: None,
                userns: None,
                console_log_max_bytes: 1 << 20,
            },
        )
        .await;
        // A backend would have been waited on for its socket (10 s) and failed first.
        match r {
            Err(SandboxError::Agent { detail, .. }) => {
                assert!(detail.contains("VMM exited during boot"), "{detail}")
            }
            Err(e) => panic!("expected the VMM's exit, got {e}"),
            Ok(_) => panic!("a VMM that exits cannot boot"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        let spec = hv
            .spec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("booted");
        assert_eq!(spec.vsock_uds, paths.vsock());
        assert_eq!(spec.run_dir, paths.dir);
        assert_eq!(spec.fs_shares, fs_shares(&paths, true));
        assert!(!paths.dir.exists(), "a failed launch leaves nothing behind");
    }
}
