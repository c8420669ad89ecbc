//! One FUSE request in, one FUSE reply out, over plain byte buffers.
//!
//! fuse-backend-rs's `Server` parses the request and calls the filesystem; it takes a
//! `Reader` and a `Writer` from fuse-backend-rs's own transport module. Its `virtiofs`
//! transport builds them from a virtio-queue 0.17 descriptor chain over vm-memory 0.17 guest
//! memory, which cannot be made from the 0.18 rust-vmm stack this backend (and the vsock one)
//! runs on, and 0.14 is the newest fuse-backend-rs. So we use its `fusedev` transport, which
//! works on byte buffers:
//!
//! - the request: the chain's readable part copied into one buffer (small for anything a
//!   read-only share accepts; WRITE payloads are copied and then refused);
//! - the reply: a `FuseDevWriter` over a buffer the size of the chain's writable part, put in
//!   buffered mode (`split_at(0)`) so that every reply, including READ's header + file data,
//!   is assembled contiguously in that buffer. The caller copies it into the guest's
//!   descriptors. The writer's "commit" (the single write a `/dev/fuse` reply needs) goes to
//!   `/dev/null`: we do not need it, the bytes are already in the buffer.
//!
//! The reply's length and validity come from the FUSE out header in the buffer (its `unique`
//! must match the request's), not from the server's return value, which is 0 for replies
//! like DESTROY's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader, Writer};

use super::guard::GuardedFs;

/// `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, padding.
pub const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`: len, error, unique.
pub const OUT_HEADER_LEN: usize = 16;

/// FUSE opcodes the guest sends without waiting for a reply.
pub const FUSE_FORGET: u32 = 2;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;

/// The fields of a request header we need to frame a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
}

impl InHeader {
    pub fn parse(buf: &[u8]) -> Option<InHeader> {
        Some(InHeader {
            len: u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?),
            opcode: u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?),
            unique: u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?),
        })
        .filter(|_| buf.len() >= IN_HEADER_LEN)
    }

    /// Whether the guest waits for an answer to this request.
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self.opcode,
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT
        )
    }
}

/// `struct fuse_out_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

impl OutHeader {
    pub fn parse(buf: &[u8]) -> Option<OutHeader> {
        Some(OutHeader {
            len: u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?),
            error: i32::from_le_bytes(buf.get(4..8)?.try_into().ok()?),
            unique: u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?),
        })
    }

    pub fn encode(&self) -> [u8; OUT_HEADER_LEN] {
        let mut out = [0u8; OUT_HEADER_LEN];
        out[0..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..8].copy_from_slice(&self.error.to_le_bytes());
        out[8..16].copy_from_slice(&self.unique.to_le_bytes());
        out
    }
}

/// The filesystem behind the server.
pub type SharedFs = GuardedFs<PassthroughFs>;

/// fuse-backend-rs's FUSE server over the (guarded) passthrough filesystem.
pub struct FuseServer {
    server: Server<SharedFs>,
    /// Where buffered replies are "committed"; see the module docs.
    sink: File,
}

impl FuseServer {
    pub fn new(fs: SharedFs) -> io::Result<FuseServer> {
        let sink = File::options().write(true).open("/dev/null")?;
        Ok(FuseServer {
            server: Server::new(fs),
            sink,
        })
    }

    /// Handles one request. `request` holds the whole request (header and arguments) as the
    /// guest sent it; `reply` is as large as the room the guest gave for the answer. Returns
    /// the length of the reply written at the start of `reply`, 0 when there is none (the
    /// request takes no reply, or it was too broken to answer: both logged).
    pub fn handle(&self, request: &mut [u8], reply: &mut [u8]) -> usize {
        let Some(hdr) = InHeader::parse(request) else {
            crate::warn_limited!(
                len = request.len(),
                "virtio-fs: request shorter than a FUSE header"
            );
            return 0;
        };
        if let Some(head) = reply.get_mut(..OUT_HEADER_LEN) {
            // A stale header from an earlier request must not pass for this one's reply.
            head.fill(0);
        }
        let result = self.dispatch(request, reply);
        let written = OutHeader::parse(reply).filter(|out| {
            out.unique == hdr.unique && (OUT_HEADER_LEN..=reply.len()).contains(&(out.len as usize))
        });
        if let Some(out) = written {
            return out.len as usize;
        }
        match result {
            Ok(_) if !hdr.expects_reply() => 0,
            Err(e) if !hdr.expects_reply() => {
                tracing::debug!(opcode = hdr.opcode, error = %e, "virtio-fs: request failed");
                0
            }
            result => {
                let why = result
                    .err()
                    .unwrap_or_else(|| "the server wrote no reply".to_owned());
                tracing::warn!(
                    opcode = hdr.opcode,
                    unique = hdr.unique,
                    %why,
                    "virtio-fs: request failed; answering EIO"
                );
                error_reply(hdr.unique, libc::EIO, reply)
            }
        }
    }

    fn dispatch(&self, request: &mut [u8], reply: &mut [u8]) -> Result<usize, String> {
        let reader =
            Reader::<()>::from_fuse_buffer(FuseBuf::new(request)).map_err(|e| e.to_string())?;
        let mut unbuffered =
            FuseDevWriter::<()>::new(self.sink.as_raw_fd(), reply).map_err(|e| e.to_string())?;
        // Buffered mode: everything lands in `reply`; see the module docs.
        let writer = unbuffered.split_at(0).map_err(|e| e.to_string())?;
        self.server
            .handle_message(reader, Writer::FuseDev(writer), None, None)
            .map_err(|e| e.to_string())
    }
}

/// Writes an error reply (`-errno`) for `unique` into `reply`; returns its length (0 when
/// `reply` has no room for it).
pub fn error_reply(unique: u64, errno: i32, reply: &mut [u8]) -> usize {
    let out = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    match reply.get_mut(..OUT_HEADER_LEN) {
        Some(head) => {
            head.copy_from_slice(&out.encode());
            OUT_HEADER_LEN
        }
        None => 0,
    }
}

#[cfg(test)]
pub mod testutil {
    //! Hand-encoded FUSE requests (little-endian, as `struct fuse_*_in` lays them out).

    use super::IN_HEADER_LEN;

    pub use super::FUSE_FORGET;
    pub const FUSE_LOOKUP: u32 = 1;
    pub const FUSE_GETATTR: u32 = 3;
    pub const FUSE_MKDIR: u32 = 9;
    pub const FUSE_OPEN: u32 = 14;
    pub const FUSE_READ: u32 = 15;
    pub const FUSE_WRITE: u32 = 16;
    pub const FUSE_GETXATTR: u32 = 22;
    pub const FUSE_INIT: u32 = 26;
    pub const FUSE_DESTROY: u32 = 38;
    pub const FUSE_KERNEL_VERSION: u32 = 7;
    pub const FUSE_KERNEL_MINOR_VERSION: u32 = 31;

    /// A request: header (with the right total length) + `body`.
    pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
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

    /// `fuse_init_in` (7.31: major, minor, max_readahead, flags).
    pub fn init_in() -> Vec<u8> {
        let mut b = Vec::new();
        for v in [
            FUSE_KERNEL_VERSION,
            FUSE_KERNEL_MINOR_VERSION,
            128 * 1024,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// A NUL-terminated name.
    pub fn name(n: &str) -> Vec<u8> {
        let mut b = n.as_bytes().to_vec();
        b.push(0);
        b
    }

    /// `fuse_open_in`: flags, open_flags.
    pub fn open_in(flags: i32) -> Vec<u8> {
        let mut b = (flags as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b
    }

    /// `fuse_read_in`: fh, offset, size, read_flags, lock_owner, flags, padding.
    pub fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&fh.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b
    }

    /// `fuse_write_in` + data: fh, offset, size, write_flags, lock_owner, flags, padding.
    pub fn write_in(fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&fh.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    /// `fuse_getxattr_in` (size, padding) + name.
    pub fn getxattr_in(size: u32, attr: &str) -> Vec<u8> {
        let mut b = size.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&name(attr));
        b
    }

    /// `fuse_mkdir_in` (mode, umask) + name.
    pub fn mkdir_in(mode: u32, dir: &str) -> Vec<u8> {
        let mut b = mode.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&name(dir));
        b
    }

    pub fn u64_at(buf: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
    }

    pub fn u32_at(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use fuse_backend_rs::passthrough::Config;

    use super::super::guard::{keeping_umask, umask_test_lock};
    use super::testutil::*;
    use super::*;

    const ROOT: u64 = 1;
    /// `fuse_entry_out`: nodeid, generation, entry_valid, attr_valid, entry/attr nsec, attr.
    const ENTRY_NODEID: usize = OUT_HEADER_LEN;
    /// `fuse_open_out`: fh, open_flags, padding.
    const OPEN_FH: usize = OUT_HEADER_LEN;

    struct Share {
        dir: tempfile::TempDir,
        server: FuseServer,
        reply: Vec<u8>,
        unique: u64,
    }

    impl Share {
        fn new(read_only: bool) -> Share {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(dir.path().join("file"), b"hello from the layer\n").expect("write");
            let cfg = Config {
                root_dir: dir.path().to_str().expect("utf-8").to_owned(),
                xattr: true,
                ..Config::default()
            };
            let fs = GuardedFs::new(PassthroughFs::new(cfg).expect("passthrough"), read_only);
            let mut s = Share {
                dir,
                server: FuseServer::new(fs).expect("server"),
                reply: vec![0xa5; 64 * 1024],
                unique: 0,
            };
            // (A read-write share leaves umask 0 behind: not in this test process.)
            let (out, body) = {
                let _umask = umask_test_lock();
                keeping_umask(|| s.call(FUSE_INIT, ROOT, &init_in()))
            };
            assert_eq!(out.error, 0, "INIT");
            assert_eq!(u32_at(&body, 0), FUSE_KERNEL_VERSION);
            s
        }

        /// Sends one request; returns the reply header and body.
        fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (OutHeader, Vec<u8>) {
            self.unique += 2;
            let mut req = request(opcode, self.unique, nodeid, body);
            let n = self.server.handle(&mut req, &mut self.reply);
            assert!(n >= OUT_HEADER_LEN, "opcode {opcode}: no reply");
            let out = OutHeader::parse(&self.reply).expect("header");
            assert_eq!(out.unique, self.unique);
            assert_eq!(out.len as usize, n);
            (out, self.reply[OUT_HEADER_LEN..n].to_vec())
        }

        fn lookup(&mut self, name_: &str) -> u64 {
            let (out, _) = self.call(FUSE_LOOKUP, ROOT, &name(name_));
            assert_eq!(out.error, 0, "lookup {name_}");
            u64_at(&self.reply, ENTRY_NODEID)
        }

        fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
            let (out, _) = self.call(FUSE_OPEN, node, &open_in(flags));
            if out.error != 0 {
                return Err(-out.error);
            }
            Ok(u64_at(&self.reply, OPEN_FH))
        }
    }

    #[test]
    fn read_and_xattr_through_the_server() {
        let mut s = Share::new(true);
        xattr::set(s.dir.path().join("file"), "user.moat", b"yes").expect("set user xattr");
        let node = s.lookup("file");
        let fh = s.open(node, libc::O_RDONLY).expect("open");
        // READ: header and data come back contiguous, with the header's length covering both.
        let (out, data) = s.call(FUSE_READ, node, &read_in(fh, 0, 4096));
        assert_eq!(out.error, 0);
        assert_eq!(data, b"hello from the layer\n");
        let (out, data) = s.call(FUSE_READ, node, &read_in(fh, 6, 4));
        assert_eq!(out.error, 0);
        assert_eq!(data, b"from");
        // GETXATTR: size probe, then the value.
        let (out, body) = s.call(FUSE_GETXATTR, node, &getxattr_in(0, "user.moat"));
        assert_eq!(out.error, 0);
        assert_eq!(u32_at(&body, 0), 3);
        let (out, body) = s.call(FUSE_GETXATTR, node, &getxattr_in(64, "user.moat"));
        assert_eq!(out.error, 0);
        assert_eq!(body, b"yes");
        let (out, _) = s.call(FUSE_GETXATTR, node, &getxattr_in(64, "user.absent"));
        assert_eq!(-out.error, libc::ENODATA);
    }

    #[test]
    fn read_only_share_answers_erofs() {
        let mut s = Share::new(true);
        let node = s.lookup("file");
        assert_eq!(s.open(node, libc::O_RDWR), Err(libc::EROFS));
        assert_eq!(
            s.open(node, libc::O_WRONLY | libc::O_TRUNC),
            Err(libc::EROFS)
        );
        let (out, _) = s.call(FUSE_MKDIR, ROOT, &mkdir_in(0o755, "new"));
        assert_eq!(-out.error, libc::EROFS);
        // A WRITE on a handle opened for reading: refused before it reaches the file.
        let fh = s.open(node, libc::O_RDONLY).expect("open");
        let (out, _) = s.call(FUSE_WRITE, node, &write_in(fh, 0, b"overwritten"));
        assert_eq!(-out.error, libc::EROFS);
        assert_eq!(
            fs::read(s.dir.path().join("file")).expect("read"),
            b"hello from the layer\n"
        );
        assert!(!s.dir.path().join("new").exists());
    }

    #[test]
    fn read_write_share_accepts_writes() {
        let mut s = Share::new(false);
        let node = s.lookup("file");
        let fh = s.open(node, libc::O_RDWR).expect("open rw");
        let (out, body) = s.call(FUSE_WRITE, node, &write_in(fh, 0, b"HELLO"));
        assert_eq!(out.error, 0);
        assert_eq!(u32_at(&body, 0), 5);
        assert_eq!(
            fs::read(s.dir.path().join("file")).expect("read"),
            b"HELLO from the layer\n"
        );
    }

    #[test]
    fn no_reply_requests_and_broken_ones() {
        let mut s = Share::new(true);
        let node = s.lookup("file");
        // FORGET takes no reply.
        let mut req = request(FUSE_FORGET, 99, node, &1u64.to_le_bytes());
        assert_eq!(s.server.handle(&mut req, &mut s.reply), 0);
        // Too short to be a request: nothing to answer.
        assert_eq!(s.server.handle(&mut [1, 2, 3], &mut s.reply), 0);
        // A truncated GETATTR (header only, no getattr_in): EIO for its unique.
        let mut req = request(FUSE_GETATTR, 1234, node, &[]);
        let n = s.server.handle(&mut req, &mut s.reply);
        assert_eq!(n, OUT_HEADER_LEN);
        let out = OutHeader::parse(&s.reply).expect("header");
        assert_eq!((out.unique, out.error), (1234, -libc::EIO));
        // No room for the reply at all: nothing written, nothing panics.
        let mut req = request(FUSE_LOOKUP, 77, ROOT, &name("file"));
        assert_eq!(s.server.handle(&mut req, &mut []), 0);
        // DESTROY is answered (the server returns 0 for it, the header tells).
        let (out, _) = {
            let _umask = umask_test_lock();
            s.call(FUSE_DESTROY, ROOT, &[])
        };
        assert_eq!(out.error, 0);
    }

    #[test]
    fn reply_room_smaller_than_the_read() {
        let mut s = Share::new(true);
        let node = s.lookup("file");
        let fh = s.open(node, libc::O_RDONLY).expect("open");
        let mut req = request(FUSE_READ, 5, node, &read_in(fh, 0, 4096));
        let mut small = vec![0u8; OUT_HEADER_LEN + 8];
        let n = s.server.handle(&mut req, &mut small);
        // Never more than the room given; an error, not a short read, for a guest that lied.
        assert!(n <= small.len());
        let out = OutHeader::parse(&small).expect("header");
        assert_eq!(out.unique, 5);
        assert_ne!(out.error, 0);
    }
}
