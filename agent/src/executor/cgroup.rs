//! cgroup v2: a container's cgroup, its limits, and its OOM kills.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::devices;
use super::error::{Error, Result};

/// Where cgroup v2 is mounted in the guest.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The controllers the executor's limits need.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "cpuset"];

fn err(path: &Path, source: std::io::Error) -> Error {
    Error::Cgroup {
        path: path.display().to_string(),
        source,
    }
}

/// Whether `root` is a cgroup v2 mount.
pub fn is_cgroup2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// A container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    oom_kills_at_start: u64,
}

/// The cgroup v2 file writes for `resources`, in order: (file, value).
pub(crate) fn limits(res: &LinuxResources) -> Result<Vec<(String, String)>> {
    let mut w = Vec::new();
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares()
            && shares > 0
        {
            // runc's conversion of cgroup v1 shares [2, 262144] to v2 weight [1, 10000].
            let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
            w.push(("cpu.weight".into(), weight.to_string()));
        }
        let period = cpu.period().unwrap_or(100_000);
        match cpu.quota() {
            Some(q) if q > 0 => w.push(("cpu.max".into(), format!("{q} {period}"))),
            Some(_) => w.push(("cpu.max".into(), format!("max {period}"))),
            None if cpu.period().is_some() => w.push(("cpu.max".into(), format!("max {period}"))),
            None => {}
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            w.push(("cpuset.cpus".into(), cpus.to_string()));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            w.push(("cpuset.mems".into(), mems.to_string()));
        }
    }
    if let Some(mem) = res.memory() {
        if let Some(r) = mem.reservation().filter(|r| *r > 0) {
            w.push(("memory.low".into(), r.to_string()));
        }
        match mem.limit() {
            Some(l) if l > 0 => w.push(("memory.max".into(), l.to_string())),
            Some(_) => w.push(("memory.max".into(), "max".into())),
            None => {}
        }
        // OCI's swap is memory+swap; v2's swap.max is the swap alone.
        match (mem.swap(), mem.limit()) {
            (Some(s), _) if s < 0 => w.push(("memory.swap.max".into(), "max".into())),
            (Some(s), Some(l)) if l > 0 => {
                if s < l {
                    return Err(Error::Spec(format!(
                        "memory.swap {s} is below memory.limit {l}"
                    )));
                }
                w.push(("memory.swap.max".into(), (s - l).to_string()));
            }
            _ => {}
        }
    }
    if let Some(pids) = res.pids() {
        let v = if pids.limit() > 0 {
            pids.limit().to_string()
        } else {
            "max".into()
        };
        w.push(("pids.max".into(), v));
    }
    let mut unified: Vec<_> = res.unified().iter().flatten().collect();
    unified.sort();
    for (k, v) in unified {
        if k.contains('/') || k.starts_with('.') || k.is_empty() {
            return Err(Error::Spec(format!(
                "unified cgroup key {k:?} is malformed"
            )));
        }
        w.push((k.clone(), v.clone()));
    }
    Ok(w)
}

/// The cgroup directory for `cgroups_path` under `root`; `..` is refused.
pub(crate) fn cgroup_dir(root: &Path, cgroups_path: &Path) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for c in cgroups_path.components() {
        match c {
            Component::Normal(n) => dir.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(Error::Spec(format!(
                    "cgroupsPath {} leaves the cgroup root",
                    cgroups_path.display()
                )));
            }
        }
    }
    if dir == root {
        return Err(Error::Spec("cgroupsPath is the cgroup root".into()));
    }
    Ok(dir)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| err(path, e))
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| err(path, e))
}

fn oom_kills(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

impl Cgroup {
    /// Creates (or reuses) `root/cgroups_path`, enabling the controllers it needs in each
    /// ancestor, writes the limits of `resources` and attaches its device filter
    /// (`devices::apply`: the spec's device rules, then runc's default devices), before any
    /// process joins it.
    pub fn create(
        root: &Path,
        cgroups_path: &Path,
        resources: Option<&LinuxResources>,
    ) -> Result<Self> {
        if !is_cgroup2(root) {
            return Err(err(root, std::io::Error::other("not a cgroup v2 mount")));
        }
        let dir = cgroup_dir(root, cgroups_path)?;
        let writes = resources.map(limits).transpose()?.unwrap_or_default();
        // Enable the controllers from the root down to the parent.
        let rel = dir
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut cur = root.to_path_buf();
        let mut created = false;
        for c in rel.components() {
            let available = read(&cur.join("cgroup.controllers"))?;
            let enable: Vec<String> = CONTROLLERS
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !enable.is_empty() {
                let control = cur.join("cgroup.subtree_control");
                let current = read(&control)?;
                for e in enable {
                    if !current.split_whitespace().any(|c| c == &e[1..]) {
                        write(&control, &e)?;
                    }
                }
            }
            cur.push(c);
            created = match std::fs::create_dir(&cur) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(err(&cur, e)),
            };
        }
        for (file, value) in writes {
            write(&dir.join(&file), &value)?;
        }
        if let Err(e) = devices::apply(&dir, resources) {
            if created {
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(e);
        }
        Ok(Cgroup {
            oom_kills_at_start: oom_kills(&dir),
            path: dir,
        })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Whether the OOM killer killed anything in the cgroup since it was created here.
    pub fn oom_killed(&self) -> bool {
        oom_kills(&self.path) > self.oom_kills_at_start
    }

    /// Kills every process in the cgroup (cgroup.kill), where the kernel has it.
    pub fn kill_all(&self) {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        }
    }

    /// Kills what is left in the cgroup and removes it.
    pub fn remove(&self) -> Result<()> {
        self.kill_all();
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(err(
            &self.path,
            last.unwrap_or_else(|| std::io::Error::other("busy")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn limits_become_cgroup_v2_files() {
        let res = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(50_000i64)
                    .period(100_000u64)
                    .shares(1024u64)
                    .build()
                    .expect("cpu"),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(128i64 << 20)
                    .build()
                    .expect("mem"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(100i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("res");
        assert_eq!(
            limits(&res).expect("limits"),
            vec![
                ("cpu.weight".to_string(), "39".to_string()),
                ("cpu.max".into(), "50000 100000".into()),
                ("memory.max".into(), (64u64 << 20).to_string()),
                ("memory.swap.max".into(), (64u64 << 20).to_string()),
                ("pids.max".into(), "100".into()),
            ]
        );
        let res = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(-1i64)
                    .build()
                    .expect("cpu"),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1i64)
                    .build()
                    .expect("mem"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(0i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("res");
        assert_eq!(
            limits(&res).expect("limits"),
            vec![
                ("cpu.max".to_string(), "max 100000".to_string()),
                ("memory.max".into(), "max".into()),
                ("pids.max".into(), "max".into()),
            ]
        );
    }

    #[test]
    fn cgroups_path_stays_under_the_root() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            cgroup_dir(root, Path::new("/moat/c1")).expect("dir"),
            root.join("moat/c1")
        );
        assert_eq!(
            cgroup_dir(root, Path::new("moat/c1")).expect("dir"),
            root.join("moat/c1")
        );
        assert!(cgroup_dir(root, Path::new("/moat/../../etc")).is_err());
        assert!(cgroup_dir(root, Path::new("/")).is_err());
    }
}
