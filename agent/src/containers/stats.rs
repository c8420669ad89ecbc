//! The container's usage, read from its cgroup v2 files.

use std::path::Path;

use super::now_nanos;

/// Reads cpu.stat, memory.current, memory.stat and pids.current under `dir`.
pub(super) fn read_stats(dir: &Path) -> moat_proto::agent::StatsResponse {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let key = |text: &str, k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    let usage: u64 = read("memory.current").trim().parse().unwrap_or(0);
    let inactive = key(&read("memory.stat"), "inactive_file ");
    moat_proto::agent::StatsResponse {
        timestamp: now_nanos(),
        cpu_usage_nanos: key(&read("cpu.stat"), "usage_usec ") * 1000,
        memory_usage_bytes: usage,
        memory_working_set_bytes: usage.saturating_sub(inactive),
        pids: read("pids.current").trim().parse().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_cgroup_files() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(
            d.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .expect("w");
        std::fs::write(d.path().join("memory.current"), "10000\n").expect("w");
        std::fs::write(
            d.path().join("memory.stat"),
            "anon 6000\ninactive_file 3000\n",
        )
        .expect("w");
        std::fs::write(d.path().join("pids.current"), "4\n").expect("w");
        let s = read_stats(d.path());
        assert_eq!(
            (
                s.cpu_usage_nanos,
                s.memory_usage_bytes,
                s.memory_working_set_bytes,
                s.pids
            ),
            (1_500_000, 10000, 7000, 4)
        );
    }
}
