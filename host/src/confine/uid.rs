//! Per-pod uids for the jailed processes that run without root: each pod gets one uid of
//! its own from a configured range (gid the same number), so two pods' processes cannot
//! signal, trace or open each other's files.
//!
//! The allocation is recorded on disk, not in memory: a pod's uid owns its VM directory's
//! `vsock` socket folder (which it needs to own anyway), so after a moatd restart the
//! uids in use are read back from the VM directories. A pod's first choice is a hash of
//! its id; taken ones are skipped.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// The range pods' uids come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid.
    pub base: u32,
    /// How many.
    pub count: u32,
}

/// Serialises allocations in this process (choose, then chown, as one step).
static ALLOCATING: Mutex<()> = Mutex::new(());

fn hash(id: &str) -> u32 {
    // FNV-1a: stable across runs and versions (the choice only has to spread pods out).
    id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The uids of `range` owning `<vm_root>/*/<marker>`.
fn in_use(vm_root: &Path, marker: &str, range: UidRange) -> std::collections::BTreeSet<u32> {
    let Ok(dirs) = std::fs::read_dir(vm_root) else {
        return Default::default();
    };
    dirs.flatten()
        .filter_map(|d| std::fs::symlink_metadata(d.path().join(marker)).ok())
        .map(|m| m.uid())
        .filter(|&u| u >= range.base && u - range.base < range.count)
        .collect()
}

/// Picks a free uid of `range` for sandbox `id` and makes it own `marker_dir` (a new
/// directory `<vm_root>/<vm>/<marker>`, mode 0700), all under one lock. Fails when the
/// range is used up.
pub fn allocate(
    vm_root: &Path,
    marker_dir: &Path,
    id: &str,
    range: UidRange,
) -> std::io::Result<u32> {
    let _guard = ALLOCATING.lock().unwrap_or_else(|p| p.into_inner());
    let marker = marker_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("the uid marker has no name"))?;
    if range.base == 0 || range.base.checked_add(range.count).is_none() {
        return Err(std::io::Error::other(format!(
            "confinement.uid_base {} with uid_count {} is not a range of non-root uids",
            range.base, range.count
        )));
    }
    let used = in_use(vm_root, marker, range);
    if range.count == 0 || used.len() as u64 >= u64::from(range.count) {
        return Err(std::io::Error::other(format!(
            "all {} pod uids from {} are in use; raise confinement.uid_count",
            range.count, range.base
        )));
    }
    let start = hash(id) % range.count;
    let uid = (0..range.count)
        .map(|i| range.base + (start + i) % range.count)
        .find(|u| !used.contains(u))
        .ok_or_else(|| std::io::Error::other("no free pod uid"))?;
    std::os::unix::fs::chown(marker_dir, Some(uid), Some(uid))?;
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pods_get_distinct_uids_recorded_on_disk() {
        let d = tempfile::tempdir().expect("tmp");
        let range = UidRange {
            base: 2_100_000_000,
            count: 3,
        };
        let mut got = Vec::new();
        for id in ["a", "b", "c"] {
            let m = d.path().join(id).join("vsock");
            std::fs::create_dir_all(&m).expect("mkdir");
            std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            let uid = allocate(d.path(), &m, id, range).expect("allocate");
            assert_eq!(std::fs::metadata(&m).expect("stat").uid(), uid);
            got.push(uid);
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|&u| u >= range.base && u < range.base + 3));
        // Full: a fourth pod is refused, with what to do.
        let m = d.path().join("d").join("vsock");
        std::fs::create_dir_all(&m).expect("mkdir");
        let e = allocate(d.path(), &m, "d", range).expect_err("full");
        assert!(e.to_string().contains("uid_count"), "{e}");
        // A pod gone frees its uid.
        std::fs::remove_dir_all(d.path().join("b")).expect("rm");
        allocate(d.path(), &m, "d", range).expect("freed");
    }
}
