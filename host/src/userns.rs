//! A pod's user namespace (CRI NamespaceMode POD for users: Kubernetes' `hostUsers:
//! false`): its uid and gid mappings, checked once at RunPodSandbox and kept in the
//! sandbox record.
//!
//! In a Moat pod the "host" ids of the mappings are the guest VM's ids (the VM is the
//! pod's own): the agent starts the pod's init in a user namespace with these mappings and
//! the containers join it. Files a container creates on a volume belong, on the host, to
//! the mapped ids (the virtio-fs back-end creates them as the guest caller). The image
//! layers keep the image's owners on the host; the pod's `layers` back-end reports them
//! shifted by the mappings (`moat_devices::fs::owners`), so inside the namespace image
//! files keep the owners the image gave them.

use moat_devices::fs::owners::{IdRange, Owners};
use moat_proto::agent as pb;

/// `length` ids from `container_id` inside the namespace are `host_id`... in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    /// The first id inside the namespace.
    pub container_id: u32,
    /// The first id it is in the VM.
    pub host_id: u32,
    /// How many ids.
    pub length: u32,
}

impl IdMapping {
    /// The agent's form.
    pub fn to_proto(&self) -> pb::IdMapping {
        pb::IdMapping {
            container_id: self.container_id,
            host_id: self.host_id,
            length: self.length,
        }
    }

    /// The OCI runtime spec's form.
    pub fn to_oci(&self) -> serde_json::Value {
        serde_json::json!({
            "containerID": self.container_id,
            "hostID": self.host_id,
            "size": self.length,
        })
    }

    fn range(&self) -> IdRange {
        IdRange {
            inside: self.container_id,
            outside: self.host_id,
            len: self.length,
        }
    }
}

/// A pod's user namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserNamespace {
    /// The uid mappings.
    pub uids: Vec<IdMapping>,
    /// The gid mappings.
    pub gids: Vec<IdMapping>,
}

/// Why mappings were refused (InvalidArgument at the CRI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user namespace: {0}")]
pub struct MappingError(pub String);

fn extents(maps: &[IdMapping]) -> Vec<moat_proto::userns::IdMap> {
    maps.iter()
        .map(|m| moat_proto::userns::IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        })
        .collect()
}

impl UserNamespace {
    /// Checks the mappings as the kernel will take them and as the agent needs them
    /// (`moat_proto::userns::check`, the rule the agent applies too), with a message that
    /// says which.
    pub fn validate(&self) -> Result<(), MappingError> {
        moat_proto::userns::check(&extents(&self.uids), &extents(&self.gids)).map_err(MappingError)
    }

    /// How the pod's `layers` back-end shifts owners.
    pub fn owners(&self) -> Owners {
        Owners {
            uids: self.uids.iter().map(IdMapping::range).collect(),
            gids: self.gids.iter().map(IdMapping::range).collect(),
        }
    }

    /// The agent's form.
    pub fn to_proto(&self) -> pb::UserNamespace {
        pb::UserNamespace {
            uids: self.uids.iter().map(IdMapping::to_proto).collect(),
            gids: self.gids.iter().map(IdMapping::to_proto).collect(),
        }
    }

    /// The VM id that container root is (what owns the files it creates).
    pub fn root_uid(&self) -> Option<u32> {
        self.uids
            .iter()
            .find(|m| m.container_id == 0)
            .map(|m| m.host_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    fn ns(uids: Vec<IdMapping>) -> UserNamespace {
        UserNamespace {
            gids: uids.clone(),
            uids,
        }
    }

    #[test]
    fn kubelet_mappings_pass_and_become_owners_and_proto() {
        let u = ns(vec![m(0, 65536, 65536)]);
        u.validate().expect("valid");
        assert_eq!(u.root_uid(), Some(65536));
        let o = u.owners();
        assert_eq!(
            o.uids,
            vec![IdRange {
                inside: 0,
                outside: 65536,
                len: 65536
            }]
        );
        let p = u.to_proto();
        assert_eq!((p.uids[0].host_id, p.gids[0].length), (65536, 65536));
        assert_eq!(
            u.uids[0].to_oci(),
            serde_json::json!({"containerID": 0, "hostID": 65536, "size": 65536})
        );
    }

    #[test]
    fn bad_mappings_are_refused_with_the_reason() {
        let cases = [
            (ns(vec![]), "no uid mappings"),
            (ns(vec![m(0, 1, 0)]), "length 0"),
            (ns(vec![m(0, u32::MAX - 5, 10)]), "overflow"),
            (
                ns(vec![m(0, 100_000, 100), m(50, 200_000, 100)]),
                "container side",
            ),
            (
                ns(vec![m(0, 100_000, 100), m(100, 100_050, 10)]),
                "host side",
            ),
            (
                ns(vec![m(0, 1, 1); moat_proto::userns::MAX_EXTENTS + 1]),
                "340",
            ),
            (ns(vec![m(1, 65536, 10)]), "uid 0 and gid 0 must be mapped"),
        ];
        for (u, want) in cases {
            let e = u.validate().expect_err(want);
            assert!(e.to_string().contains(want), "{e} / {want}");
        }
        let mut gid_bad = ns(vec![m(0, 65536, 65536)]);
        gid_bad.gids.clear();
        let e = gid_bad.validate().expect_err("no gids");
        assert!(e.to_string().contains("no gid mappings"), "{e}");
    }
}
