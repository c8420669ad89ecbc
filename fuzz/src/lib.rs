//! What the fuzz targets share: reading structured values out of the fuzzer's bytes, and
//! snapshots of a directory tree (to assert that nothing outside a sandbox directory changed).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The fuzzer's bytes, read front to back. Past the end every read yields zeros (or an empty
/// slice), so a target never has to give up on a short input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length-prefixed (u16 LE) piece.
    pub fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }
}

/// How much of a regular file's contents a snapshot keeps.
pub const SNAPSHOT_BYTES: u64 = 64 * 1024;

/// What a snapshot records of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ino: u64,
    pub nlink: u64,
    /// Regular files: the first `SNAPSHOT_BYTES` of the contents; symlinks: the target.
    pub data: Vec<u8>,
}

/// Every path under `root` (not following symlinks) with its metadata, except the subtrees
/// named in `skip` (paths relative to `root`).
pub fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), skip, &mut out);
    out
}

fn walk(root: &Path, rel: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, Node>) {
    let path = root.join(rel);
    let Ok(m) = std::fs::symlink_metadata(&path) else {
        return;
    };
    let data = if m.file_type().is_symlink() {
        std::fs::read_link(&path)
            .map(|t| t.into_os_string().into_encoded_bytes())
            .unwrap_or_default()
    } else if m.is_file() {
        // Not the whole file: code under test may leave a sparse file of gigabytes.
        let mut head = Vec::new();
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.take(SNAPSHOT_BYTES).read_to_end(&mut head);
        }
        head
    } else {
        Vec::new()
    };
    out.insert(
        rel.to_owned(),
        Node {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: if m.is_dir() { 0 } else { m.size() },
            mtime: (m.mtime(), m.mtime_nsec()),
            ino: m.ino(),
            nlink: m.nlink(),
            data,
        },
    );
    if m.is_dir()
        && let Ok(rd) = std::fs::read_dir(&path)
    {
        for e in rd.flatten() {
            let child = rel.join(e.file_name());
            if !skip.iter().any(|s| *s == child) {
                walk(root, &child, skip, out);
            }
        }
    }
}

/// A directory's listing changed (names, types, modes, owners, contents, link counts); mtimes of
/// directories are left out (a directory's mtime changes when an entry is made and removed
/// again, which is not an escape).
pub fn differs(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Option<String> {
    for (p, n) in a {
        match b.get(p) {
            None => return Some(format!("{} disappeared", p.display())),
            Some(m) => {
                let dir = n.mode & libc::S_IFMT == libc::S_IFDIR;
                let same = n.mode == m.mode
                    && n.uid == m.uid
                    && n.gid == m.gid
                    && n.size == m.size
                    && n.data == m.data
                    && n.ino == m.ino
                    && n.nlink == m.nlink
                    && (dir || n.mtime == m.mtime);
                if !same {
                    return Some(format!("{} changed: {n:?} -> {m:?}", p.display()));
                }
            }
        }
    }
    b.keys()
        .find(|p| !a.contains_key(*p))
        .map(|p| format!("{} appeared", p.display()))
}

/// Ignores SIGPIPE, as a Rust `main` (moatd's) does: libFuzzer's `main` does not, and a
/// write to a socket the code under test closed would kill the fuzzer.
pub fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}
