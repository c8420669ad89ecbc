//! Unpacking one layer tarball into its own snapshot directory, in the form overlayfs reads:
//! whiteouts become 0:0 character devices, opaque directories get `trusted.overlay.opaque=y`.
//! Ownership, modes, mtimes, xattrs, hard links and symlinks are kept. Entries that would
//! land outside the directory (`..`, absolute hard links, paths through symlinks that leave
//! it) are refused, and the whole layer with them.
//!
//! Regular files, directories and symlinks go through the `tar` crate's `unpack_in`, which
//! refuses `..` and canonicalises every parent; whiteouts, hard links and device nodes are
//! done here because the crate does not create them the way a layer needs.
//!
//! A layer is hostile input: its decompressed stream and its entries are capped
//! (`UnpackLimits`, from `images.max_layer_unpacked_bytes` and `images.max_layer_entries`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::error::{Cap, ImageError};
use super::manifest::Compression;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to hide a lower directory's contents.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream (the layer's DiffID).
    pub diff_id: String,
    /// Entries written.
    pub entries: u64,
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Caps on one layer, from moatd's `[images]` config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of the decompressed tar stream (`images.max_layer_unpacked_bytes`).
    pub max_unpacked_bytes: u64,
    /// Entries in the stream (`images.max_layer_entries`).
    pub max_entries: u64,
}

/// A reader that fails once more than `left` bytes passed through it, and remembers that it
/// did (the tar crate wraps the error, so the flag is what tells a cap from corruption).
struct CappedReader<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // At most one byte past the allowance: enough to see that it was passed.
        let want =
            usize::try_from(self.left.saturating_add(1)).map_or(buf.len(), |w| w.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.exceeded = true;
                Err(io::Error::other("the layer passes its unpacked size cap"))
            }
        }
    }
}

/// Unpacks the (possibly compressed) layer blob at `blob` into the existing empty
/// directory `dest`. `layer` names the layer in errors. Unpacking stops with
/// `ImageError::TooLarge` once the decompressed stream or its entries pass `limits`.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    layer: &str,
    limits: UnpackLimits,
) -> Result<Unpacked, ImageError> {
    let bad = |detail: String| bad_layer(layer, detail);
    let mut file = File::open(blob).map_err(|e| ImageError::io(format!("open blob {layer}"), e))?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head).map_err(|e| ImageError::io("read blob", e))?;
    let head_reader = io::Cursor::new(head[..n].to_vec()).chain(file);
    let raw = BufReader::with_capacity(256 * 1024, head_reader);
    let decompressed: Box<dyn Read> = match Compression::sniff(&head[..n]) {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(raw).map_err(|e| bad(format!("zstd: {e}")))?,
        ),
    };
    let reader = HashingReader {
        inner: CappedReader {
            inner: decompressed,
            left: limits.max_unpacked_bytes,
            exceeded: false,
        },
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    archive.set_ignore_zeros(false);

    let dest_canon = dest
        .canonicalize()
        .map_err(|e| ImageError::io("snapshot dir", e))?;
    let written = write_entries(&mut archive, &dest_canon, layer, limits.max_entries);
    // Hash the end-of-archive blocks and any padding too: the DiffID covers the whole stream.
    let mut reader = archive.into_inner();
    let written = written.and_then(|entries| {
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| bad(format!("corrupt stream tail: {e}")))?;
        Ok(entries)
    });
    // Past the cap the tar crate reports a wrapped I/O error; the flag tells it apart.
    if reader.inner.exceeded {
        return Err(ImageError::TooLarge {
            what: format!("the unpacked tar stream of layer {layer}"),
            cap: Cap::LayerUnpackedBytes,
            limit: limits.max_unpacked_bytes,
        });
    }
    let entries = written?;
    Ok(Unpacked {
        diff_id: super::digest::finish(reader.hasher),
        entries,
    })
}

fn bad_layer(layer: &str, detail: String) -> ImageError {
    ImageError::BadLayer {
        layer: layer.into(),
        detail,
    }
}

/// Writes the entries of `archive` under `dest_canon` (canonical) and returns how many were
/// written; more than `max_entries` in the stream is an error.
fn write_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    dest_canon: &Path,
    layer: &str,
    max_entries: u64,
) -> Result<u64, ImageError> {
    let bad = |detail: String| bad_layer(layer, detail);
    let mut seen = 0u64;
    let mut entries = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a tar stream: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
        seen += 1;
        if seen > max_entries {
            return Err(ImageError::TooLarge {
                what: format!("layer {layer}"),
                cap: Cap::LayerEntries,
                limit: max_entries,
            });
        }
        let raw_path = entry.path_bytes().into_owned();
        let rel = relative_path(&raw_path).map_err(&bad)?;
        let Some(rel) = rel else { continue };
        let name = rel.file_name().unwrap_or_default().as_bytes().to_vec();
        entries += 1;
        if name == OPAQUE_MARKER.as_bytes() {
            let dir = prepare_parent(dest_canon, &rel.with_file_name("x"))
                .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
            xattr::set(&dir, OPAQUE_XATTR, b"y")
                .map_err(|e| ImageError::io(format!("mark {} opaque", dir.display()), e))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
                // Other `.wh..wh.` meta entries (AUFS hard-link dirs) carry nothing for overlayfs.
                continue;
            }
            let target = rel.with_file_name(OsStr::from_bytes(hidden));
            let parent = prepare_parent(dest_canon, &target)
                .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
            let path = parent.join(OsStr::from_bytes(hidden));
            remove_existing(&path).map_err(|e| ImageError::io("replace with whiteout", e))?;
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| ImageError::io(format!("whiteout {}", path.display()), e.into()))?;
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let src_rel = relative_path(&link)
                    .map_err(|why| bad(format!("hard link {}: {why}", rel.display())))?
                    .ok_or_else(|| bad(format!("hard link {} has no target", rel.display())))?;
                let src = resolve_inside(dest_canon, &src_rel).map_err(|e| {
                    bad(format!(
                        "hard link {} -> {}: {e}",
                        rel.display(),
                        src_rel.display()
                    ))
                })?;
                let parent = prepare_parent(dest_canon, &rel)
                    .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                let dst = parent.join(rel.file_name().unwrap_or_default());
                remove_existing(&dst).map_err(|e| ImageError::io("replace with hard link", e))?;
                std::fs::hard_link(&src, &dst).map_err(|e| {
                    bad(format!(
                        "hard link {} -> {}: {e}",
                        rel.display(),
                        src_rel.display()
                    ))
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let parent = prepare_parent(dest_canon, &rel)
                    .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                let dst = parent.join(rel.file_name().unwrap_or_default());
                let h = entry.header();
                let flag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let mode = h.mode().unwrap_or(0o644) & 0o7777;
                remove_existing(&dst).map_err(|e| ImageError::io("replace with device", e))?;
                mknod(
                    &dst,
                    flag,
                    Mode::from_bits_truncate(mode),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| ImageError::io(format!("mknod {}", dst.display()), e.into()))?;
                let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
                nix::unistd::fchownat(
                    nix::fcntl::AT_FDCWD,
                    &dst,
                    Some(nix::unistd::Uid::from_raw(uid as u32)),
                    Some(nix::unistd::Gid::from_raw(gid as u32)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| ImageError::io(format!("chown {}", dst.display()), e.into()))?;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {}
            _ => {
                let written = entry
                    .unpack_in(dest_canon)
                    .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                if !written {
                    return Err(bad(format!(
                        "entry {:?} escapes the layer root",
                        String::from_utf8_lossy(&raw_path)
                    )));
                }
            }
        }
    }
    Ok(entries)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Turns an entry path into a path relative to the layer root. `Ok(None)` for the root
/// itself; an error for any `..` component.
fn relative_path(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "entry {:?} escapes the layer root",
                    String::from_utf8_lossy(raw)
                ));
            }
            Component::Normal(p) => out.push(p),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Creates the parent directories of `rel` inside `root` (canonical) and returns the parent,
/// refusing to go through a symlink that leads outside `root` or through a non-directory.
fn prepare_parent(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut cur = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        let Component::Normal(part) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unexpected path component",
            ));
        };
        let next = cur.join(part);
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&next)?;
                cur = next;
            }
            Err(e) => return Err(e),
            Ok(m) if m.is_dir() => cur = next,
            Ok(m) if m.file_type().is_symlink() => {
                let resolved = next.canonicalize()?;
                if !resolved.starts_with(root) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{} is a symlink leading outside the layer root",
                            next.display()
                        ),
                    ));
                }
                if !resolved.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", next.display()),
                    ));
                }
                cur = resolved;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", next.display()),
                ));
            }
        }
    }
    Ok(cur)
}

/// The path of an existing entry `rel` inside `root`, with its parents resolved inside `root`.
fn resolve_inside(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let canon_parent = root.join(parent).canonicalize()?;
    if !canon_parent.starts_with(root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "target lies outside the layer root",
        ));
    }
    let p = canon_parent.join(rel.file_name().unwrap_or_default());
    std::fs::symlink_metadata(&p)?;
    Ok(p)
}

fn remove_existing(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn header(path: &str, kind: EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        // set_path refuses `..`; hostile archives write the raw bytes.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    }

    fn build(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = header(
                path,
                *kind,
                data.len() as u64,
                if *kind == EntryType::Directory {
                    0o755
                } else {
                    0o640
                },
            );
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
                h.set_cksum();
            }
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    const NO_LIMITS: UnpackLimits = UnpackLimits {
        max_unpacked_bytes: u64::MAX,
        max_entries: u64::MAX,
    };

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, ImageError>) {
        unpack_with(bytes, NO_LIMITS)
    }

    fn unpack_with(
        bytes: &[u8],
        limits: UnpackLimits,
    ) -> (tempfile::TempDir, Result<Unpacked, ImageError>) {
        let dir = tempfile::tempdir().expect("tmp");
        let blob = dir.path().join("blob");
        std::fs::write(&blob, bytes).expect("write");
        let dest = dir.path().join("fs");
        std::fs::create_dir(&dest).expect("mkdir");
        let r = unpack_layer(&blob, &dest, "sha256:test", limits);
        (dir, r)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(bytes).expect("gz");
        gz.finish().expect("gz")
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_unpacked_cap() {
        // 4 MiB of zeros in one file: a few KiB gzipped.
        let tar = build(&[("zeros", EntryType::Regular, &vec![0u8; 4 << 20], None)]);
        let bomb = gzip(&tar);
        assert!(bomb.len() < 16 << 10, "{} bytes", bomb.len());
        let limits = UnpackLimits {
            max_unpacked_bytes: 1 << 20,
            ..NO_LIMITS
        };
        let (dir, r) = unpack_with(&bomb, limits);
        match r {
            Err(ImageError::TooLarge {
                cap: Cap::LayerUnpackedBytes,
                limit,
                ref what,
            }) => {
                assert_eq!(limit, 1 << 20);
                assert!(what.contains("sha256:test"), "{what}");
            }
            other => panic!("expected the unpacked-bytes cap, got {other:?}"),
        }
        let written = std::fs::metadata(dir.path().join("fs/zeros")).map_or(0, |m| m.len());
        assert!(written <= 1 << 20, "{written} bytes written past the cap");
    }

    #[test]
    fn the_unpacked_cap_counts_the_whole_tar_stream() {
        // Headers, padding and the end-of-archive blocks count, not just file data.
        let tar = build(&[("f", EntryType::Regular, b"x", None)]);
        let exact = UnpackLimits {
            max_unpacked_bytes: tar.len() as u64,
            ..NO_LIMITS
        };
        let (_dir, r) = unpack_with(&gzip(&tar), exact);
        r.expect("a stream exactly at the cap");
        let short = UnpackLimits {
            max_unpacked_bytes: tar.len() as u64 - 1,
            ..NO_LIMITS
        };
        let (_dir, r) = unpack_with(&tar, short);
        assert!(
            matches!(
                r,
                Err(ImageError::TooLarge {
                    cap: Cap::LayerUnpackedBytes,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn too_many_entries_stop_the_layer() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), EntryType::Regular, &b""[..], None))
            .collect();
        let tar = build(&entries);
        let limits = UnpackLimits {
            max_entries: 10,
            ..NO_LIMITS
        };
        let (dir, r) = unpack_with(&tar, limits);
        assert!(
            matches!(
                r,
                Err(ImageError::TooLarge {
                    cap: Cap::LayerEntries,
                    limit: 10,
                    ..
                })
            ),
            "{r:?}"
        );
        assert!(!dir.path().join("fs/f10").exists());
        let limits = UnpackLimits {
            max_entries: 20,
            ..NO_LIMITS
        };
        let (_dir, r) = unpack_with(&tar, limits);
        assert_eq!(r.expect("20 entries").entries, 20);
    }

    #[test]
    fn regular_layer_keeps_modes_owners_links_and_hashes_the_stream() {
        let tar = build(&[
            ("etc/", EntryType::Directory, b"", None),
            (
                "etc/passwd",
                EntryType::Regular,
                b"root:x:0:0::/root:/bin/sh\n",
                None,
            ),
            ("etc/passwd-link", EntryType::Link, b"", Some("etc/passwd")),
            ("bin/sh", EntryType::Symlink, b"", Some("/bin/busybox")),
        ]);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gz");
        let (dir, r) = unpack_bytes(&gz.finish().expect("gz"));
        let u = r.expect("unpack");
        assert_eq!(u.diff_id, expected);
        let fs = dir.path().join("fs");
        let m = std::fs::metadata(fs.join("etc/passwd")).expect("passwd");
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        assert_eq!(m.nlink(), 2);
        assert_eq!(
            std::fs::read_link(fs.join("bin/sh")).expect("link"),
            PathBuf::from("/bin/busybox")
        );
    }

    #[test]
    fn whiteouts_and_opaque_dirs_take_the_overlayfs_form() {
        let tar = build(&[
            ("a/.wh.gone", EntryType::Regular, b"", None),
            ("b/.wh..wh..opq", EntryType::Regular, b"", None),
        ]);
        let (dir, r) = unpack_bytes(&zstd::encode_all(&tar[..], 3).expect("zstd"));
        r.expect("unpack");
        let fs = dir.path().join("fs");
        let m = std::fs::symlink_metadata(fs.join("a/gone")).expect("whiteout");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &m.file_type()
        ));
        assert_eq!(m.rdev(), 0);
        assert_eq!(
            xattr::get(fs.join("b"), OPAQUE_XATTR).expect("xattr"),
            Some(b"y".to_vec())
        );
        assert!(!fs.join("b/.wh..wh..opq").exists());
    }

    #[test]
    fn parent_dir_traversal_is_refused() {
        let (dir, r) = unpack_bytes(&build(&[("../escape", EntryType::Regular, b"x", None)]));
        assert!(matches!(r, Err(ImageError::BadLayer { .. })), "{r:?}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn hard_link_outside_the_root_is_refused() {
        let (_dir, r) = unpack_bytes(&build(&[(
            "x",
            EntryType::Link,
            b"",
            Some("../../../etc/passwd"),
        )]));
        assert!(matches!(r, Err(ImageError::BadLayer { .. })), "{r:?}");
        let (_dir, r) = unpack_bytes(&build(&[("x", EntryType::Link, b"", Some("/etc/passwd"))]));
        // An absolute link name is read relative to the layer root, where nothing exists.
        assert!(matches!(r, Err(ImageError::BadLayer { .. })), "{r:?}");
    }

    #[test]
    fn writing_through_a_symlink_that_leaves_the_root_is_refused() {
        let outside = tempfile::tempdir().expect("tmp");
        let target = outside.path().to_str().expect("utf8").to_owned();
        let (_dir, r) = unpack_bytes(&build(&[
            ("evil", EntryType::Symlink, b"", Some(&target)),
            ("evil/owned", EntryType::Regular, b"x", None),
        ]));
        assert!(matches!(r, Err(ImageError::BadLayer { .. })), "{r:?}");
        assert!(!outside.path().join("owned").exists());
        let (_dir, r) = unpack_bytes(&build(&[
            ("evil", EntryType::Symlink, b"", Some(&target)),
            ("evil/.wh.x", EntryType::Regular, b"", None),
        ]));
        assert!(matches!(r, Err(ImageError::BadLayer { .. })), "{r:?}");
    }

    #[test]
    fn pax_xattrs_are_unpacked() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.moat", b"kept".as_slice())])
            .expect("pax");
        let h = header("file", EntryType::Regular, 1, 0o644);
        b.append(&h, b"x".as_slice()).expect("append");
        let (dir, r) = unpack_bytes(&b.into_inner().expect("tar"));
        r.expect("unpack");
        assert_eq!(
            xattr::get(dir.path().join("fs/file"), "user.moat").expect("xattr"),
            Some(b"kept".to_vec())
        );
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let tar = build(&[("big", EntryType::Regular, &[7u8; 4096], None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gz");
        let gz = gz.finish().expect("gz");
        let (_dir, r) = unpack_bytes(&gz[..gz.len() / 2]);
        assert!(matches!(r, Err(ImageError::BadLayer { .. })), "{r:?}");
    }
}
