//! What a pod's host processes cost the node: CPU time and memory of the VMM, its device
//! back-ends and everything they started (a confined process is the child of its jail),
//! read from /proc. This is the sandbox's overhead over what its containers use in the guest
//! (PodSandboxStats, ListPodSandboxMetrics and Prometheus report it).

use std::collections::HashMap;

/// The summed cost of a set of process trees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostUsage {
    /// User plus system CPU time, nanoseconds (reaped children's included).
    pub cpu_nanos: u64,
    /// Resident memory, bytes: the proportional set size where the kernel reports it (a
    /// shared library counts once across the processes), else the resident set size.
    pub memory_bytes: u64,
    /// The processes counted.
    pub processes: u64,
}

/// One process as /proc tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    ppid: i32,
    cpu_ticks: u64,
    rss_pages: u64,
}

/// A snapshot of the host's processes: read once, then asked for several pods.
#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<i32, Proc>,
}

impl ProcessTable {
    /// Reads every process's stat line.
    pub fn read() -> Self {
        let mut procs = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self { procs };
        };
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            if let Some(p) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
            {
                procs.insert(pid, p);
            }
        }
        Self { procs }
    }

    /// The cost of `roots` and all their descendants (each process once).
    pub fn usage(&self, roots: &[i32]) -> HostUsage {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, p) in &self.procs {
            children.entry(p.ppid).or_default().push(pid);
        }
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<i32> = roots
            .iter()
            .copied()
            .filter(|p| self.procs.contains_key(p))
            .collect();
        let (tick_ns, page) = (tick_nanos(), page_size());
        let mut u = HostUsage::default();
        while let Some(pid) = todo.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let Some(p) = self.procs.get(&pid) else {
                continue;
            };
            u.processes += 1;
            u.cpu_nanos += p.cpu_ticks * tick_ns;
            u.memory_bytes += pss_bytes(pid).unwrap_or(p.rss_pages * page);
            todo.extend(children.get(&pid).into_iter().flatten());
        }
        u
    }
}

/// `/proc/<pid>/stat`: the command may hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn parse_stat(s: &str) -> Option<Proc> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    // ... rss(21).
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Proc {
        ppid: f.get(1)?.parse().ok()?,
        cpu_ticks: num(11)? + num(12)? + num(13)? + num(14)?,
        rss_pages: num(21)?,
    })
}

fn pss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn tick_nanos() -> u64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_commands_are_read() {
        let line = "42 (qemu (x) y) S 7 42 42 0 -1 4194560 100 0 0 0 30 12 5 3 20 0 4 0 \
                    1000 200000000 2500 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Proc {
                ppid: 7,
                cpu_ticks: 50,
                rss_pages: 2500
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_tree_counts_its_descendants_once() {
        let p = |ppid, cpu_ticks| Proc {
            ppid,
            cpu_ticks,
            rss_pages: 1,
        };
        // Pids that /proc does not have: memory falls back to the pages counted here.
        let t = ProcessTable {
            procs: HashMap::from([
                (-10, p(1, 1)),
                (-11, p(-10, 2)),
                (-12, p(-11, 4)),
                (-13, p(1, 8)),
            ]),
        };
        let u = t.usage(&[-10, -11, -99]);
        assert_eq!(u.processes, 3);
        assert_eq!(u.cpu_nanos, 7 * tick_nanos());
        assert_eq!(u.memory_bytes, 3 * page_size());
    }

    #[test]
    fn this_process_costs_something() {
        let me = std::process::id() as i32;
        let u = ProcessTable::read().usage(&[me]);
        assert!(u.processes >= 1 && u.memory_bytes > 0, "{u:?}");
    }
}
