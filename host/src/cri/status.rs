//! The edge where typed errors become gRPC statuses, each with the code clients act on and
//! a message that says what to do.

use tonic::{Code, Status};

use crate::images::ImageError;

/// The status for `e`, with `code` unless the disk is full: then ResourceExhausted, which
/// says so, since every call that writes (pulls, the state database, container logs, a
/// VM's run directory) fails the same way until space is freed, and freeing it is the fix.
fn status(code: Code, e: &(dyn std::error::Error + 'static)) -> Status {
    if disk_full(e) {
        return Status::resource_exhausted(format!(
            "{e}: the disk is full; free space under moatd's root_dir and run_dir (or the pod's log directory), then retry"
        ));
    }
    Status::new(code, e.to_string())
}

/// Whether ENOSPC or EDQUOT is in `e`'s chain. Some errors keep their cause as text only
/// (the image store's redb errors), so the OS's words count too.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        {
            return true;
        }
        let text = err.to_string();
        if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
            return true;
        }
        next = err.source();
    }
    false
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Self {
        let code = match &e {
            ImageError::InvalidReference { .. } | ImageError::InvalidRequest(_) => {
                Code::InvalidArgument
            }
            ImageError::NotFound(_) | ImageError::RemoteNotFound { .. } => Code::NotFound,
            ImageError::Unauthorized { .. } => Code::Unauthenticated,
            ImageError::Unreachable { .. } | ImageError::BadResponse { .. } => Code::Unavailable,
            ImageError::Timeout { .. } => Code::DeadlineExceeded,
            ImageError::DigestMismatch { .. } => Code::DataLoss,
            // Content moatd will not take, like an unsupported or unsafe image: the request
            // is well-formed, and retrying cannot help until the image or the operator's
            // cap (named in the message) changes.
            ImageError::Unsupported { .. }
            | ImageError::BadLayer { .. }
            | ImageError::TooLarge { .. } => Code::FailedPrecondition,
            ImageError::Storage(_) | ImageError::Io { .. } => Code::Internal,
        };
        status(code, &e)
    }
}

/// CheckpointContainer's answer: moatd serves every other CRI v1 method.
pub fn checkpoint_unsupported() -> Status {
    Status::unimplemented(
        "CheckpointContainer is not supported by moatd: it cannot checkpoint a container inside a pod VM (every other CRI v1 method is served)",
    )
}

impl From<crate::sandbox::SandboxError> for Status {
    fn from(e: crate::sandbox::SandboxError) -> Self {
        use crate::sandbox::SandboxError as E;
        let code = match &e {
            E::BadRequest(_) => Code::InvalidArgument,
            E::Unknown(_) => Code::NotFound,
            E::NameTaken { .. } => Code::AlreadyExists,
            E::WrongState(_) | E::Transition { .. } => Code::FailedPrecondition,
            E::DeadlineMissed { .. } => Code::DeadlineExceeded,
            E::Hypervisor {
                source: crate::hypervisor::HypervisorError::MissingImage { .. },
                ..
            } => Code::FailedPrecondition,
            E::Network { source, .. }
                if matches!(**source, crate::network::NetworkError::InvalidRequest(_)) =>
            {
                Code::InvalidArgument
            }
            E::Network { .. } => Code::Unavailable,
            E::Hypervisor { .. } | E::Agent { .. } | E::Store(_) | E::Io { .. } => Code::Internal,
        };
        status(code, &e)
    }
}

impl From<crate::network::pod_cidr::PodCidrError> for Status {
    fn from(e: crate::network::pod_cidr::PodCidrError) -> Self {
        match e {
            crate::network::pod_cidr::PodCidrError::NotACidr(_) => {
                Status::invalid_argument(e.to_string())
            }
            crate::network::pod_cidr::PodCidrError::Store(_) => status(Code::Internal, &e),
        }
    }
}

impl From<crate::pods::PodError> for Status {
    fn from(e: crate::pods::PodError) -> Self {
        match e {
            crate::pods::PodError::Sandbox(e) => e.into(),
            crate::pods::PodError::Container(e) => e.into(),
        }
    }
}

impl From<crate::containers::ContainerError> for Status {
    fn from(e: crate::containers::ContainerError) -> Self {
        use crate::containers::ContainerError as E;
        let code = match &e {
            E::BadRequest(_) => Code::InvalidArgument,
            E::Unknown(_) => Code::NotFound,
            E::NameTaken(_) => Code::AlreadyExists,
            E::WrongState(_) => Code::FailedPrecondition,
            E::TimedOut(_) => Code::DeadlineExceeded,
            E::DiskFull(_) => Code::ResourceExhausted,
            E::Agent { .. } | E::Store(_) => Code::Internal,
        };
        status(code, &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted_whatever_the_error() {
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let s: Status = ImageError::io("write a layer", full()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("free space"), "{}", s.message());
        // Kept as text only.
        let s: Status = ImageError::Storage(full().to_string()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = crate::sandbox::SandboxError::io("make the run dir", full()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let other = std::io::Error::from_raw_os_error(libc::EIO);
        let s: Status = ImageError::io("write a layer", other).into();
        assert_eq!(s.code(), Code::Internal);
    }

    #[test]
    fn codes_follow_the_error_kind() {
        let s: Status = ImageError::NotFound("x".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ImageError::Timeout {
            registry: "r".into(),
            what: "w".into(),
            detail: "d".into(),
        }
        .into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s: Status = ImageError::DigestMismatch {
            registry: "r".into(),
            expected: "a".into(),
            actual: "b".into(),
        }
        .into();
        assert_eq!(s.code(), Code::DataLoss);
        assert!(s.message().contains("corrupted"));
        let s: Status = ImageError::TooLarge {
            what: "layer sha256:x".into(),
            cap: crate::images::error::Cap::LayerEntries,
            limit: 10,
        }
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message().contains("raise images.max_layer_entries"),
            "{}",
            s.message()
        );
    }
}
