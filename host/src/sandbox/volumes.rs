//! Volumes: a container's CRI mounts (host paths: hostPath and kubelet's emptyDir,
//! configMap and secret directories) reach the guest through the sandbox's read-write
//! `volumes` virtio-fs share. Each mount is bind-mounted (private) from its host path onto
//! `<vm dir>/volumes/<container>/<n>`; the agent bind-mounts the share's copy into the
//! container. Everything is unmounted before anything under the share is deleted, so
//! removing a sandbox can never reach into a host path.

use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The virtio-fs tag of the volumes share.
pub const VOLUMES_TAG: &str = "volumes";
/// Where the guest mounts it.
pub const VOLUMES_MOUNT: &str = "/run/moat/volumes";

/// One mount a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// The path on the host.
    pub host_path: PathBuf,
    /// Where it appears in the container.
    pub container_path: String,
    /// Read-only in the container.
    pub read_only: bool,
}

/// The same mount as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The path inside the guest (under the volumes share).
    pub guest_path: String,
    /// Where it appears in the container.
    pub container_path: String,
    /// Read-only in the container.
    pub read_only: bool,
}

/// Why a mount cannot be given to a container.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The host side failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// Checks a container path: absolute, no `..`.
pub fn check_container_path(p: &str) -> Result<(), VolumeError> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::Invalid(format!(
            "container path {p:?} must be absolute and must not contain '..'"
        )));
    }
    Ok(())
}

/// Bind-mounts each host path under `share/<key>/` and returns the guest view.
pub fn prepare(
    share: &Path,
    key: &str,
    mounts: &[HostMount],
) -> Result<Vec<GuestMount>, VolumeError> {
    let dir = share.join(key);
    let result = (|| {
        let mut out = Vec::new();
        for (n, m) in mounts.iter().enumerate() {
            check_container_path(&m.container_path)?;
            if !m.host_path.is_absolute()
                || m.host_path.components().any(|c| c == Component::ParentDir)
            {
                return Err(VolumeError::Invalid(format!(
                    "host path {} must be absolute and must not contain '..'",
                    m.host_path.display()
                )));
            }
            if !m.host_path.exists() {
                // As containerd does: a missing source is created as a directory.
                std::fs::create_dir_all(&m.host_path)
                    .map_err(io(format!("create {}", m.host_path.display())))?;
            }
            let target = dir.join(n.to_string());
            std::fs::create_dir_all(&dir).map_err(io("create the volume dir"))?;
            if m.host_path.is_dir() {
                std::fs::create_dir(&target).map_err(io("create a volume mount point"))?;
            } else {
                std::fs::write(&target, b"").map_err(io("create a volume mount point"))?;
            }
            mount(
                Some(&m.host_path),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| VolumeError::Io {
                what: format!("bind {}", m.host_path.display()),
                source: e.into(),
            })?;
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| VolumeError::Io {
                what: "make the volume private".into(),
                source: e.into(),
            })?;
            out.push(GuestMount {
                guest_path: format!("{VOLUMES_MOUNT}/{key}/{n}"),
                container_path: m.container_path.clone(),
                read_only: m.read_only,
            });
        }
        Ok(out)
    })();
    if result.is_err() {
        let _ = release(&dir);
    }
    result
}

/// Bind-mounts directory `src` read-only at `target` (created), unless already there.
pub fn bind_read_only(src: &Path, target: &Path) -> Result<(), VolumeError> {
    if mounts_under(target).iter().any(|m| m == target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(io(format!("create {}", target.display())))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| VolumeError::Io {
        what: format!("bind {}", src.display()),
        source: e.into(),
    })?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let made_ro = mount(None::<&str>, target, None::<&str>, ro, None::<&str>).and_then(|()| {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
    });
    if let Err(e) = made_ro {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(VolumeError::Io {
            what: format!("make {} read-only", target.display()),
            source: e.into(),
        });
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmounts everything under `dir`, then deletes it. Refuses to delete while anything is
/// still mounted there.
pub fn release(dir: &Path) -> Result<(), VolumeError> {
    for _ in 0..3 {
        let left = mounts_under(dir);
        if left.is_empty() {
            break;
        }
        for m in left {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        return Err(VolumeError::Invalid(format!(
            "still mounted under {}: {left:?}; not deleting",
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::Io {
            what: format!("remove {}", dir.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_made_and_released_without_touching_the_host_data() {
        let host = tempfile::tempdir().expect("host");
        std::fs::write(host.path().join("data"), b"keep me").expect("w");
        let file = host.path().join("single");
        std::fs::write(&file, b"file").expect("w");
        let share = tempfile::tempdir().expect("share");
        let got = prepare(
            share.path(),
            "c1",
            &[
                HostMount {
                    host_path: host.path().to_owned(),
                    container_path: "/data".into(),
                    read_only: true,
                },
                HostMount {
                    host_path: file.clone(),
                    container_path: "/etc/single".into(),
                    read_only: false,
                },
            ],
        )
        .expect("prepare");
        assert_eq!(got[0].guest_path, "/run/moat/volumes/c1/0");
        assert_eq!(
            std::fs::read(share.path().join("c1/0/data")).expect("through the bind"),
            b"keep me"
        );
        assert_eq!(
            std::fs::read(share.path().join("c1/1")).expect("file bind"),
            b"file"
        );
        assert_eq!(mounts_under(share.path()).len(), 2);
        release(&share.path().join("c1")).expect("release");
        assert!(mounts_under(share.path()).is_empty());
        assert_eq!(
            std::fs::read(host.path().join("data")).expect("host data survives"),
            b"keep me"
        );
        assert!(!share.path().join("c1").exists());
    }

    #[test]
    fn read_only_binds_refuse_writes_and_are_idempotent() {
        let src = tempfile::tempdir().expect("src");
        std::fs::write(src.path().join("f"), b"layer").expect("w");
        let share = tempfile::tempdir().expect("share");
        let t = share.path().join("abc");
        bind_read_only(src.path(), &t).expect("bind");
        bind_read_only(src.path(), &t).expect("again");
        assert_eq!(mounts_under(share.path()).len(), 1);
        assert_eq!(std::fs::read(t.join("f")).expect("r"), b"layer");
        assert!(std::fs::write(t.join("g"), b"x").is_err(), "read-only");
        release(share.path()).expect("release");
        assert!(src.path().join("f").exists());
    }

    #[test]
    fn bad_paths_are_refused() {
        let share = tempfile::tempdir().expect("share");
        for (h, c) in [
            ("relative", "/x"),
            ("/tmp", "relative"),
            ("/tmp", "/a/../b"),
        ] {
            let m = HostMount {
                host_path: h.into(),
                container_path: c.into(),
                read_only: false,
            };
            assert!(
                matches!(
                    prepare(share.path(), "c", &[m]),
                    Err(VolumeError::Invalid(_))
                ),
                "{h} {c}"
            );
        }
        assert!(mounts_under(share.path()).is_empty());
    }
}
