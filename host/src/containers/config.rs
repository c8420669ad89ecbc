//! The `[containers]` section: where the CRI leaves a choice to the runtime and Moat's
//! stricter default is the operator's to take.

use serde::{Deserialize, Serialize};

/// Container defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// The seccomp profile of a container whose request names none. The CRI says
    /// Unconfined (kubelet names RuntimeDefault when it wants it); `runtime-default` is
    /// containerd's `unset_seccomp_profile = "runtime/default"`.
    pub seccomp_when_unset: UnsetSeccomp,
    /// Give the default masked and read-only paths to a container whose request lists
    /// neither. The CRI says the request's lists replace the defaults, so an empty list
    /// masks nothing (kubelet sends the defaults itself, and empty lists only for
    /// `procMount: Unmasked`, which this option then overrides).
    pub mask_paths_when_unset: bool,
    /// The most a container's log file holds, in bytes (CRI-O's `log_size_max`): past it
    /// the file is emptied and goes on, so a container flooding its output costs at most
    /// this much disk between two of kubelet's rotations. 0: no cap.
    pub log_size_max: u64,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            seccomp_when_unset: UnsetSeccomp::default(),
            mask_paths_when_unset: false,
            log_size_max: 256 << 20,
        }
    }
}

/// The profile of a container that names none.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UnsetSeccomp {
    /// No filter, as the CRI says.
    #[default]
    Unconfined,
    /// Moat's RuntimeDefault profile.
    RuntimeDefault,
}

impl ContainersConfig {
    /// Fills in what the request left to the runtime.
    pub fn apply(&self, input: &mut super::spec::ContainerInput) {
        use super::spec::{MASKED, READONLY, Seccomp};
        if input.seccomp == Seccomp::Unset {
            input.seccomp = match self.seccomp_when_unset {
                UnsetSeccomp::Unconfined => Seccomp::Unconfined,
                UnsetSeccomp::RuntimeDefault => Seccomp::RuntimeDefault,
            };
        }
        if self.mask_paths_when_unset
            && input.masked_paths.is_empty()
            && input.readonly_paths.is_empty()
        {
            input.masked_paths = MASKED.iter().map(|s| s.to_string()).collect();
            input.readonly_paths = READONLY.iter().map(|s| s.to_string()).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::spec::{ContainerInput, Seccomp};

    #[test]
    fn the_cri_default_unless_the_operator_asks_for_moats() {
        let mut i = ContainerInput::default();
        ContainersConfig::default().apply(&mut i);
        assert_eq!(i.seccomp, Seccomp::Unconfined);
        assert!(i.masked_paths.is_empty());
        let strict: ContainersConfig = toml::from_str(
            "seccomp_when_unset = \"runtime-default\"\nmask_paths_when_unset = true\n",
        )
        .expect("parse");
        let mut i = ContainerInput::default();
        strict.apply(&mut i);
        assert_eq!(i.seccomp, Seccomp::RuntimeDefault);
        assert!(i.masked_paths.iter().any(|p| p == "/proc/kcore"));
        let mut named = ContainerInput {
            seccomp: Seccomp::Unconfined,
            masked_paths: vec!["/x".into()],
            ..Default::default()
        };
        strict.apply(&mut named);
        assert_eq!(
            named.seccomp,
            Seccomp::Unconfined,
            "a named profile is kept"
        );
        assert_eq!(named.masked_paths, vec!["/x"]);
    }
}
