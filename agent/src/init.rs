//! PID 1 duties inside the pod VM: the standard mounts, the kernel modules the image
//! ships (in the order `/lib/moat/modules.order` gives), and reaping orphans.

use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Where the guest image keeps its modules and their load order.
pub const MODULES_DIR: &str = "/lib/moat/modules";
/// One module file name per line, dependencies first.
pub const MODULES_ORDER: &str = "/lib/moat/modules.order";

/// What failed while bringing the guest up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mount {target}: {source}")]
    Mount {
        /// The mount point.
        target: String,
        /// Why.
        source: nix::Error,
    },
    /// A module could not be loaded.
    #[error("load module {module}: {source}")]
    Module {
        /// The module file.
        module: String,
        /// Why.
        source: std::io::Error,
    },
}

struct MountSpec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Set in the environment once PID 1 has moved off the initramfs.
const SWITCHED: &str = "MOAT_SWITCHED_ROOT";

/// Whether `/` is the initramfs (rootfs, a ramfs or tmpfs the kernel unpacked).
fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some("/") && l.contains(" - rootfs "))
        })
        .unwrap_or(true)
}

/// Moves PID 1 off the initramfs onto a tmpfs, the way switch_root does, then executes
/// `/init` again there. On the initramfs pivot_root(2) is impossible, so containers would
/// fall back to chroot, which a process with CAP_SYS_CHROOT can leave; on a real mount
/// they get pivot_root. Returns only if nothing had to be done.
pub fn switch_off_initramfs() -> Result<(), InitError> {
    if std::env::var_os(SWITCHED).is_some() {
        return Ok(());
    }
    let _ = std::fs::create_dir_all("/proc");
    let proc_mounted = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    )
    .is_ok();
    let on_initramfs = root_is_initramfs();
    if proc_mounted {
        let _ = nix::mount::umount("/proc");
    }
    if !on_initramfs {
        return Ok(());
    }
    let new = Path::new("/newroot");
    let io = |what: &str, e: std::io::Error| InitError::Module {
        module: format!("switch root: {what}"),
        source: e,
    };
    std::fs::create_dir_all(new).map_err(|e| io("mkdir /newroot", e))?;
    mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|source| InitError::Mount {
        target: "/newroot".into(),
        source,
    })?;
    move_tree(Path::new("/"), new).map_err(|e| io("move the initramfs", e))?;
    std::env::set_current_dir(new).map_err(|e| io("chdir", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        InitError::Mount {
            target: "/".into(),
            source,
        }
    })?;
    nix::unistd::chroot(".").map_err(|e| io("chroot", e.into()))?;
    std::env::set_current_dir("/").map_err(|e| io("chdir /", e))?;
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new("/init").env(SWITCHED, "1"),
    );
    Err(io("exec /init", err))
}

/// The filesystem type of `/` (for the boot log).
pub fn root_fs_type() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.split(' ').nth(4) == Some("/"))
                .and_then(|l| {
                    l.split(" - ")
                        .nth(1)
                        .and_then(|t| t.split(' ').next().map(str::to_owned))
                })
        })
        .unwrap_or_default()
}

/// Moves files, directories and symlinks from `from` into `to`, skipping `to` itself: each
/// is copied, then removed from `from`, so the initramfs gives its memory back as the tmpfs
/// fills (otherwise every pod would hold its image twice, hidden under the new root). What
/// it does not copy (device nodes) stays, and so do the directories holding them.
fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        if src == to {
            continue;
        }
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            move_tree(&src, &dst)?;
            let _ = std::fs::remove_dir(&src);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            std::fs::remove_file(&src)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
            std::fs::remove_file(&src)?;
        }
    }
    Ok(())
}

/// Mounts the standard filesystems. Already-mounted targets (EBUSY) are fine.
pub fn mount_all() -> Result<(), InitError> {
    for m in MOUNTS {
        let _ = std::fs::create_dir_all(m.target);
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    target: m.target.into(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Brings up the loopback interface, so localhost works in the pod (and port forwarding
/// reaches it) whether or not the pod has a network. SIOCSIFFLAGS on a datagram socket:
/// one flag on one well-known interface needs no netlink.
pub fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write one ifreq through a valid pointer.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads the module order file: non-empty, non-comment lines.
pub fn module_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Loads every module listed in the order file; modules already loaded or built in (EEXIST)
/// are fine, and so is a kernel without module support (ENOSYS: the minimal kernel of the
/// built-in VMM has everything built in, and boots the same initramfs). Returns how many
/// were loaded.
pub fn load_modules(dir: &Path, order_file: &Path) -> Result<usize, InitError> {
    let Ok(text) = std::fs::read_to_string(order_file) else {
        return Ok(0);
    };
    let mut loaded = 0;
    for name in module_order(&text) {
        let path = dir.join(&name);
        let file = std::fs::File::open(&path).map_err(|source| InitError::Module {
            module: name.clone(),
            source,
        })?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::Error::EEXIST) => {}
            Err(nix::Error::ENOSYS) => {
                tracing::info!("kernel without module support: everything is built in");
                return Ok(loaded);
            }
            Err(e) => {
                return Err(InitError::Module {
                    module: name,
                    source: e.into(),
                });
            }
        }
    }
    Ok(loaded)
}

/// Reaps every child that exits, forever. As PID 1, orphans of the whole guest land here.
pub async fn reap_orphans() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        return;
    };
    loop {
        sigchld.recv().await;
        // The executor keeps the statuses of its own children for their waiters.
        crate::executor::reap_children();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_skips_blanks_and_comments() {
        assert_eq!(
            module_order("# deps first\nvirtio.ko\n\n  vsock.ko \n"),
            vec!["virtio.ko", "vsock.ko"]
        );
    }

    #[test]
    fn move_tree_keeps_dirs_files_and_links_and_skips_the_target() {
        let d = tempfile::tempdir().expect("tmp");
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("lib/moat")).expect("mkdir");
        std::fs::write(src.join("init"), b"agent").expect("w");
        std::fs::write(src.join("lib/moat/modules.order"), b"a.ko\n").expect("w");
        std::os::unix::fs::symlink("init", src.join("link")).expect("ln");
        let dst = src.join("newroot");
        std::fs::create_dir(&dst).expect("mkdir");
        std::fs::create_dir(src.join("dev")).expect("mkdir");
        nix::unistd::mkfifo(&src.join("dev/fifo"), nix::sys::stat::Mode::S_IRUSR).expect("fifo");
        move_tree(&src, &dst).expect("move");
        assert_eq!(std::fs::read(dst.join("init")).expect("r"), b"agent");
        assert_eq!(
            std::fs::read(dst.join("lib/moat/modules.order")).expect("r"),
            b"a.ko\n"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).expect("l"),
            Path::new("init")
        );
        assert!(
            !dst.join("newroot").exists(),
            "the target is not copied into itself"
        );
        // The source gives its files up; what was not copied stays.
        assert!(!src.join("init").exists() && !src.join("lib").exists());
        assert!(src.join("dev/fifo").exists() && !dst.join("dev/fifo").exists());
    }

    #[test]
    fn a_missing_order_file_loads_nothing() {
        assert_eq!(
            load_modules(Path::new("/nonexistent"), Path::new("/nonexistent/order")).expect("ok"),
            0
        );
    }

    #[test]
    fn loopback_comes_up_in_a_fresh_network_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED loopback_comes_up_in_a_fresh_network_namespace: needs root");
            return;
        }
        let up = std::thread::spawn(|| {
            // SAFETY: unshare on this throwaway thread only changes its own namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            // A fresh namespace's lo is down: localhost cannot be reached.
            let reach = || {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .and_then(std::net::TcpStream::connect)
                    .is_ok()
            };
            assert!(!reach(), "lo starts down");
            loopback_up().expect("lo up");
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on lo");
            std::net::TcpStream::connect(l.local_addr().expect("addr")).is_ok()
        })
        .join()
        .expect("thread");
        assert!(up, "localhost accepts connections");
    }
}
