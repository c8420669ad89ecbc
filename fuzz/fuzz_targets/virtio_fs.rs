#![no_main]
//! Untrusted input: the FUSE requests a guest kernel (a hostile one included) puts on a
//! virtio-fs queue, handed to `fs::server::FuseServer::handle`: `InHeader::parse`, then
//! fuse-backend-rs's argument decoding for the opcode, Moat's `GuardedFs` policy (read-only
//! shares refuse every change; read-write ones refuse devices, setuid files and file
//! capabilities) and the passthrough filesystem over a real share in a temporary directory.
//!
//! There is no path validator of Moat's own in devices/src/fs: names are checked by the
//! passthrough (one component, no `/`, not `..`). So the invariant is asserted on what comes
//! out instead, and the fuzzer looks for violations, not just panics:
//! - no reply carries the bytes of a file outside the share (`outside`, next to it), even
//!   through the symlinks planted in the share (`up` -> `../outside`, `abs` -> its absolute
//!   path);
//! - no entry the server hands out is the share's parent, `outside` or the parent's parent;
//! - nothing outside the share changes; a read-only share does not change at all;
//! - a read-write share holds no setuid file, setgid non-directory, device (but the 0:0
//!   whiteout) or `security.capability` xattr afterwards;
//! - replies fit the room given, and carry the request's `unique` and their own length.
//!
//! Input: a flags byte (1: read-write share), then requests: opcode (u8), node (u8, an index
//! into the node ids handed out so far, the root first), a handle choice (u8: with 0x80,
//! the body's first 8 bytes become a handle handed out so far), the reply room (u8 index),
//! the body (`u16 LE length, bytes`). On a read-write share SYMLINK, FALLOCATE,
//! COPY_FILE_RANGE and MKNOD of FIFOs are skipped: they could reach outside the sandbox
//! directory or block the fuzzer, not the share's policy.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moat_devices::fs::in_process_server;
use moat_devices::fs::server::{IN_HEADER_LEN, OUT_HEADER_LEN, OutHeader};
use moat_fuzz::{Input, differs, snapshot};

const SECRET: &[u8] = b"OUTSIDE-THE-SHARE-7f3a9c";
const MAX_REQUESTS: usize = 48;
const ROOMS: [usize; 6] = [0, 8, 16, 128, 4096, 65536];

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SYMLINK: u32 = 6;
const FUSE_MKNOD: u32 = 8;
const FUSE_MKDIR: u32 = 9;
const FUSE_LINK: u32 = 13;
const FUSE_OPEN: u32 = 14;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_CREATE: u32 = 35;
const FUSE_FALLOCATE: u32 = 43;
const FUSE_READDIRPLUS: u32 = 44;
const FUSE_COPY_FILE_RANGE: u32 = 47;
/// `sizeof(struct fuse_entry_out)`; its `attr.ino` is at 40.
const ENTRY_OUT: usize = 128;

fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = (IN_HEADER_LEN + body.len()) as u32;
    let mut r = Vec::with_capacity(len as usize);
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes()); // uid
    r.extend_from_slice(&0u32.to_le_bytes()); // gid
    r.extend_from_slice(&1u32.to_le_bytes()); // pid
    r.extend_from_slice(&0u32.to_le_bytes()); // padding
    r.extend_from_slice(body);
    r
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("stat").ino()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let read_write = input.u8() & 1 == 1;

    let root = tempfile::tempdir().expect("tempdir");
    let share = root.path().join("share");
    let outside = root.path().join("outside");
    std::fs::write(&outside, SECRET).expect("outside");
    std::fs::create_dir_all(share.join("dir")).expect("share");
    std::fs::write(share.join("file"), b"hello from the layer\n").expect("file");
    std::fs::write(share.join("dir/inner"), b"inner\n").expect("inner");
    std::os::unix::fs::symlink("../outside", share.join("up")).expect("symlink");
    std::os::unix::fs::symlink(&outside, share.join("abs")).expect("symlink");
    let forbidden = [
        ino(root.path()),
        ino(&outside),
        ino(root.path().parent().expect("parent")),
    ];
    let share_rel = Path::new("share");
    let around_before = snapshot(root.path(), &[share_rel]);
    let share_before = snapshot(&share, &[]);

    let server = in_process_server(&share, !read_write).expect("server");
    let mut reply = vec![0u8; 65536];
    let mut init = request(FUSE_INIT, 1, 1, &init_in());
    let n = server.handle(&mut init, &mut reply);
    let out = OutHeader::parse(&reply[..n]).expect("INIT reply");
    assert_eq!(out.error, 0, "INIT failed");

    let mut nodes = vec![1u64];
    let mut handles = vec![0u64];
    for i in 0..MAX_REQUESTS {
        if input.is_empty() {
            break;
        }
        let unique = 2 + i as u64;
        let opcode = u32::from(input.u8());
        let node = nodes[usize::from(input.u8()) % nodes.len()];
        let handle = input.u8();
        let room = ROOMS[usize::from(input.u8()) % ROOMS.len()];
        let mut body = input.piece().to_vec();
        if handle & 0x80 != 0 && body.len() >= 8 {
            let fh = handles[usize::from(handle & 0x7f) % handles.len()];
            body[..8].copy_from_slice(&fh.to_le_bytes());
        }
        if read_write && skipped_on_rw(opcode, &body) {
            continue;
        }
        let mut req = request(opcode, unique, node, &body);
        let reply = &mut reply[..room];
        let n = server.handle(&mut req, reply);
        assert!(n <= room, "reply of {n} bytes in {room}");
        if n == 0 {
            continue;
        }
        let reply = &reply[..n];
        let out = OutHeader::parse(reply).expect("reply header");
        assert_eq!(out.unique, unique, "reply for another request");
        assert_eq!(out.len as usize, n, "reply length");
        assert!(
            !reply.windows(SECRET.len()).any(|w| w == SECRET),
            "opcode {opcode}: a reply carries the contents of a file outside the share"
        );
        if out.error != 0 {
            continue;
        }
        let body = &reply[OUT_HEADER_LEN..];
        let entries: Vec<usize> = match opcode {
            FUSE_LOOKUP | FUSE_MKNOD | FUSE_MKDIR | FUSE_SYMLINK | FUSE_LINK | FUSE_CREATE => {
                vec![0]
            }
            FUSE_READDIRPLUS => direntplus_offsets(body),
            _ => Vec::new(),
        };
        for at in entries {
            let (Some(nodeid), Some(ino)) = (u64_at(body, at), u64_at(body, at + 40)) else {
                continue;
            };
            if nodeid == 0 {
                continue;
            }
            assert!(
                !forbidden.contains(&ino),
                "opcode {opcode}: node {nodeid} is inode {ino}, outside the share"
            );
            if nodes.len() < 64 && !nodes.contains(&nodeid) {
                nodes.push(nodeid);
            }
        }
        if opcode == FUSE_GETATTR
            && let Some(ino) = u64_at(body, 16)
        {
            assert!(
                !forbidden.contains(&ino),
                "GETATTR of inode {ino}, outside the share"
            );
        }
        let fh = match opcode {
            FUSE_OPEN | FUSE_OPENDIR => u64_at(body, 0),
            FUSE_CREATE => u64_at(body, ENTRY_OUT),
            _ => None,
        };
        if let Some(fh) = fh
            && handles.len() < 64
        {
            handles.push(fh);
        }
    }
    drop(server);

    let around_after = snapshot(root.path(), &[share_rel]);
    if let Some(d) = differs(&around_before, &around_after) {
        panic!("outside the share: {d}");
    }
    if read_write {
        check_rw_share(&share);
    } else if let Some(d) = differs(&share_before, &snapshot(&share, &[])) {
        panic!("the read-only share changed: {d}");
    }
});

/// `fuse_init_in` (7.31: major, minor, max_readahead, flags).
fn init_in() -> Vec<u8> {
    [7u32, 31, 128 * 1024, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Where each `fuse_direntplus` of a READDIRPLUS reply starts.
fn direntplus_offsets(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    // fuse_entry_out, then fuse_dirent: ino, off, namelen (u32), type (u32), name, padding.
    while at + ENTRY_OUT + 24 <= b.len() {
        out.push(at);
        let namelen = u32::from_le_bytes(
            b[at + ENTRY_OUT + 16..at + ENTRY_OUT + 20]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        at += (ENTRY_OUT + 24 + namelen).next_multiple_of(8);
    }
    out
}

fn skipped_on_rw(opcode: u32, body: &[u8]) -> bool {
    match opcode {
        FUSE_SYMLINK | FUSE_FALLOCATE | FUSE_COPY_FILE_RANGE => true,
        FUSE_MKNOD => {
            let mode = u32::from_le_bytes(
                body.get(..4)
                    .map_or([0; 4], |b| b.try_into().expect("4 bytes")),
            );
            mode & libc::S_IFMT == libc::S_IFIFO
        }
        _ => false,
    }
}

/// What the guard promises of a read-write share, checked on the files left in it.
fn check_rw_share(share: &Path) {
    for (rel, node) in snapshot(share, &[]) {
        let kind = node.mode & libc::S_IFMT;
        let path = share.join(&rel);
        assert!(
            node.mode & libc::S_ISUID == 0,
            "setuid file {} in a read-write share",
            rel.display()
        );
        assert!(
            node.mode & libc::S_ISGID == 0 || kind == libc::S_IFDIR,
            "setgid file {} in a read-write share",
            rel.display()
        );
        if kind == libc::S_IFBLK || kind == libc::S_IFCHR {
            let rdev = std::fs::symlink_metadata(&path).map_or(0, |m| m.rdev());
            assert!(
                kind == libc::S_IFCHR && rdev == 0,
                "device {} ({rdev:#x}) in a read-write share",
                rel.display()
            );
        }
        if kind != libc::S_IFLNK {
            assert!(
                xattr::get(&path, "security.capability")
                    .ok()
                    .flatten()
                    .is_none(),
                "file capability on {} in a read-write share",
                rel.display()
            );
        }
    }
}
