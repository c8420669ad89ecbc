//! The overlay mount a container's rootfs is.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

/// The overlay's mount data for `lowers` (image layers, bottom first, as the manifest lists
/// them), `upper` and `work`.
pub(crate) fn overlay_data(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String> {
    if lowers.is_empty() {
        return Err(Error::Spec(
            "an overlay needs at least one lower layer".into(),
        ));
    }
    let check = |p: &Path| -> Result<String> {
        let s = std::str::from_utf8(p.as_os_str().as_bytes())
            .map_err(|_| Error::Spec(format!("overlay path {} is not UTF-8", p.display())))?;
        if s.contains([',', ':', '\\']) || !p.is_absolute() {
            return Err(Error::Spec(format!(
                "overlay path {s} must be absolute without , : or \\"
            )));
        }
        Ok(s.to_string())
    };
    // overlayfs lists the top-most lower first.
    let lower = lowers
        .iter()
        .rev()
        .map(|p| check(p))
        .collect::<Result<Vec<_>>>()?
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        check(upper)?,
        check(work)?
    );
    // The mount data is one page.
    if data.len() >= 4096 {
        return Err(Error::Spec(format!(
            "overlay options are {} bytes, over the 4095 mount(2) takes ({} layers)",
            data.len(),
            lowers.len()
        )));
    }
    Ok(data)
}

/// Mounts an overlay on `target`: `lowers` are the image layers bottom first (the order of
/// the image manifest), `upper` and `work` directories on the same filesystem (the guest's
/// tmpfs), empty on first use.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let data = overlay_data(lowers, upper, work)?;
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("mkdir {}", d.display()), e))?;
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| Error::errno(format!("mount overlay on {}", target.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_are_listed_top_first() {
        let data = overlay_data(
            &[PathBuf::from("/l/base"), PathBuf::from("/l/top")],
            Path::new("/u"),
            Path::new("/w"),
        )
        .expect("data");
        assert_eq!(data, "lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w");
        assert!(overlay_data(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err());
        assert!(overlay_data(&[], Path::new("/u"), Path::new("/w")).is_err());
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/moat/layers/{i:064}")))
            .collect();
        assert!(overlay_data(&many, Path::new("/u"), Path::new("/w")).is_err());
    }
}
