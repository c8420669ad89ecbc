//! PID 1 duties inside the pod VM: the standard mounts, the kernel modules the image
//! ships (in the order `/lib/moat/modules.order` gives), and reaping orphans.

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

/// Reads the module order file: non-empty, non-comment lines.
pub fn module_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Loads every module listed in the order file; modules already loaded or built in (EEXIST)
/// are fine. Returns how many were loaded.
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
    fn a_missing_order_file_loads_nothing() {
        assert_eq!(
            load_modules(Path::new("/nonexistent"), Path::new("/nonexistent/order")).expect("ok"),
            0
        );
    }
}
