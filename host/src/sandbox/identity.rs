//! The pod's identity inside its VM, as the CRI asks for it: the hostname (the node's when
//! the pod names none, as containerd and CRI-O give it) and the pod's sysctls, each checked
//! here so that a value the guest kernel cannot take is InvalidArgument at RunPodSandbox,
//! never an Internal error from the agent.

use std::collections::BTreeMap;

use super::error::SandboxError;

/// The longest hostname the kernel takes (HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;

/// The guest's hostname: the request's, or the node's when it is empty.
pub fn hostname(requested: &str) -> Result<String, SandboxError> {
    let name = if requested.is_empty() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| valid_hostname(h))
            .unwrap_or_else(|| "localhost".into())
    } else {
        requested.to_owned()
    };
    if !valid_hostname(&name) {
        return Err(SandboxError::BadRequest(format!(
            "hostname {name:?} cannot be set: it must be 1 to {MAX_HOSTNAME} characters of \
             letters, digits, '-' and '.' (or leave it empty for the node's hostname)"
        )));
    }
    Ok(name)
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOSTNAME
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks the pod's sysctls: names by the rule the agent applies too
/// (`moat_proto::sysctl`), values on one line.
pub fn check_sysctls(sysctls: &BTreeMap<String, String>) -> Result<(), SandboxError> {
    for (key, value) in sysctls {
        if moat_proto::sysctl::sysctl_path(key).is_none() {
            return Err(SandboxError::BadRequest(format!(
                "sysctl {key:?} is not a sysctl name (e.g. net.ipv4.ip_local_port_range)"
            )));
        }
        if value.contains('\n') || value.contains('\0') {
            return Err(SandboxError::BadRequest(format!(
                "sysctl {key} has a value with a newline or NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_hostname_gets_the_nodes_and_a_bad_one_is_invalid() {
        let node = hostname("").expect("node's");
        assert!(valid_hostname(&node), "{node:?}");
        assert_eq!(hostname("web-0").expect("ok"), "web-0");
        let long = "a".repeat(65);
        for bad in [long.as_str(), "bad host", "x/y"] {
            let e = hostname(bad).expect_err(bad);
            assert!(matches!(e, SandboxError::BadRequest(_)), "{e:?}");
        }
        assert_eq!(hostname(&"a".repeat(64)).expect("64 is fine").len(), 64);
    }

    #[test]
    fn sysctl_names_are_checked() {
        let ok: BTreeMap<String, String> = [
            ("net.ipv4.ip_forward", "1"),
            ("kernel.shm_rmid_forced", "1"),
            ("net/ipv4/conf/eth0.100/forwarding", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        check_sysctls(&ok).expect("valid");
        for bad in ["", "kernel", "../../etc/passwd", "net..x", "a b.c"] {
            let m = BTreeMap::from([(bad.to_string(), "1".to_string())]);
            assert!(check_sysctls(&m).is_err(), "{bad:?}");
        }
        let m = BTreeMap::from([("kernel.x".to_string(), "1\n2".to_string())]);
        assert!(check_sysctls(&m).is_err());
    }
}
