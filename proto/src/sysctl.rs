//! Sysctl names as SetupSandboxRequest carries them: both sides check them with this one
//! rule (moatd to answer InvalidArgument at RunPodSandbox, the agent before it writes
//! under /proc/sys).

/// The path under /proc/sys of sysctl `key`, in dotted form (`net.ipv4.ip_forward`) or in
/// slash form (`net/ipv4/conf/eth0.100/forwarding`, where dots belong to a component), as
/// sysctl(8) and the Kubernetes API take them; None for a key that names no sysctl or could
/// leave /proc/sys.
pub fn sysctl_path(key: &str) -> Option<String> {
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    let ok = parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b))
        });
    ok.then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::sysctl_path;

    #[test]
    fn sysctl_keys_map_under_proc_sys_and_never_leave_it() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding").as_deref(),
            Some("net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(
            sysctl_path("kernel.shmmax").as_deref(),
            Some("kernel/shmmax")
        );
        for bad in [
            "",
            "kernel",
            "net..x",
            "../etc/passwd",
            "net/../../x",
            "a/b c",
            "a.b\\0",
        ] {
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
    }
}
