//! A guest's FUSE requests to the in-process virtio-fs device, through the virtio-mmio
//! transport (the crate's test driver), for the confined-VMM tests: one of each kind the
//! guest's kernel sends for everyday file work, so that the seccomp filter and the kept
//! capabilities are tried on the passthrough's real syscalls (`confined_child`).
//!
//! The request layouts are linux/fuse.h's (little-endian), written by hand: fuse-backend-rs
//! is a FUSE server and offers no request encoder for a client.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use moat_vmm::VmmConfig;
use moat_vmm::config::{FsConfig, JailConfig};
use moat_vmm::jail;

use moat_vmm::devices::virtio::IrqTrigger;
use moat_vmm::devices::virtio::fs::{Fs, REQUEST_QUEUE};
use moat_vmm::devices::virtio::mmio::MmioTransport;
use moat_vmm::devices::virtio::test_utils::{MmioDriver, guest_memory};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const REQUEST: u16 = REQUEST_QUEUE as u16;
const WAIT: Duration = Duration::from_secs(10);
/// The share's root inode.
pub const ROOT: u64 = 1;
/// The unprivileged guest user that creates files.
pub const GUEST_UID: u32 = 1000;

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const LINK: u32 = 13;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const SETXATTR: u32 = 21;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const REMOVEXATTR: u32 = 24;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const RELEASEDIR: u32 = 29;
const ACCESS: u32 = 34;
const CREATE: u32 = 35;
const FALLOCATE: u32 = 43;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;
const LSEEK: u32 = 46;

const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_entry_out`: nodeid, generation, two validities (with nsec), `fuse_attr`.
const ENTRY_OUT_LEN: usize = 128;
/// `FATTR_MODE | FATTR_UID | FATTR_GID`.
const FATTR_MODE_UID_GID: u32 = 0b111;
/// `FATTR_SIZE | FATTR_ATIME | FATTR_MTIME`.
const FATTR_SIZE_ATIME_MTIME: u32 = 0b11_1000;

/// A little-endian byte string builder.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn name(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// `struct fuse_read_in` (also READDIRPLUS's).
fn read_in(fh: u64, size: u32) -> Body {
    Body::default()
        .u64(fh)
        .u64(0)
        .u32(size)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0)
}

/// A driver with the virtio-fs device, and the requests' results so far.
pub struct Guest {
    drv: MmioDriver,
    unique: u64,
    /// One line per request: `ok <what>` or `FAIL <what>: errno <n>`.
    pub report: Vec<String>,
    /// Whether every request succeeded.
    pub all_ok: bool,
}

impl Guest {
    /// The device behind a transport, as the VMM builds it (no driver yet).
    pub fn new(dev: Fs) -> Guest {
        let irq = Arc::new(IrqTrigger::new(
            EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        ));
        let mem = guest_memory(16 << 20);
        let t = MmioTransport::new(Box::new(dev), mem.clone(), irq);
        Guest {
            drv: MmioDriver::new(t, mem),
            unique: 0,
            report: Vec::new(),
            all_ok: true,
        }
    }

    /// The driver comes up (DRIVER_OK starts the device's worker thread).
    pub fn start(&mut self) {
        let features = moat_vmm::devices::virtio::RING_FEATURES;
        self.drv.start(features, 128);
    }

    /// One request as user `uid`; records the result; returns the reply body if it
    /// succeeded.
    fn call(&mut self, what: &str, op: u32, node: u64, uid: u32, body: Body) -> Option<Vec<u8>> {
        self.unique += 1;
        let hdr = Body::default()
            .u32((IN_HEADER_LEN + body.0.len()) as u32)
            .u32(op)
            .u64(self.unique)
            .u64(node)
            .u32(uid)
            .u32(uid)
            .u32(1)
            .u32(0);
        self.drv
            .add_chain(REQUEST, &[&hdr.0, &body.0], &[OUT_HEADER_LEN as u32, 8192]);
        self.drv.kick(REQUEST);
        let used = self.drv.wait_used(REQUEST, 1, WAIT);
        let reply = used.first().map(|u| u.data.clone()).unwrap_or_default();
        let error = reply
            .get(4..8)
            .map_or(i32::MIN, |b| i32::from_le_bytes(b.try_into().expect("4")));
        if error == 0 && reply.len() >= OUT_HEADER_LEN {
            self.report.push(format!("ok {what}"));
            Some(reply[OUT_HEADER_LEN..].to_vec())
        } else {
            self.report.push(format!(
                "FAIL {what}: errno {} ({} bytes)",
                -error,
                reply.len()
            ));
            self.all_ok = false;
            None
        }
    }

    fn node(&mut self, what: &str, op: u32, parent: u64, uid: u32, body: Body) -> u64 {
        self.call(what, op, parent, uid, body)
            .map_or(0, |b| u64_at(&b, 0))
    }

    /// Everyday file work on the share (see the module docs); `hello` is a file in it with
    /// a `trusted.moat` xattr. Leaves `d/f` (written, then given to 2000:2000, mode 0600),
    /// `d/l` (a symlink to `f`), `d/h` (a hard link to `f`) and `d/w` (an overlayfs
    /// whiteout) behind.
    pub fn exercise(&mut self) {
        self.call(
            "INIT",
            INIT,
            ROOT,
            0,
            Body::default().u32(7).u32(31).u32(128 << 10).u32(0),
        );
        let hello = self.node(
            "LOOKUP hello",
            LOOKUP,
            ROOT,
            0,
            Body::default().name("hello"),
        );
        self.call(
            "GETXATTR trusted.moat",
            GETXATTR,
            hello,
            0,
            Body::default().u32(64).u32(0).name("trusted.moat"),
        );
        let getattr = Body::default().u32(0).u32(0).u64(0);
        self.call("GETATTR", GETATTR, hello, 0, getattr);
        self.call(
            "ACCESS",
            ACCESS,
            hello,
            0,
            Body::default().u32(libc::R_OK as u32).u32(0),
        );
        let mkdir = |name: &str| Body::default().u32(0o755).u32(0o022).name(name);
        let d = self.node("MKDIR d (guest user)", MKDIR, ROOT, GUEST_UID, mkdir("d"));
        let e = self.node("MKDIR e", MKDIR, ROOT, GUEST_UID, mkdir("e"));
        let create = Body::default()
            .u32((libc::O_RDWR | libc::O_CREAT) as u32)
            .u32(0o644)
            .u32(0o022)
            .u32(0)
            .name("f");
        let created = self.call("CREATE d/f (guest user)", CREATE, d, GUEST_UID, create);
        let f = created.as_deref().map_or(0, |b| u64_at(b, 0));
        let fh = created.as_deref().map_or(0, |b| u64_at(b, ENTRY_OUT_LEN));
        let write = Body::default()
            .u64(fh)
            .u64(0)
            .u32(4)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0)
            .bytes(b"data");
        self.call("WRITE", WRITE, f, GUEST_UID, write);
        self.call("READ", READ, f, GUEST_UID, read_in(fh, 4096));
        let falloc = Body::default().u64(fh).u64(0).u64(8192).u32(0).u32(0);
        self.call("FALLOCATE", FALLOCATE, f, GUEST_UID, falloc);
        let lseek = Body::default().u64(fh).u64(0).u32(3).u32(0); // SEEK_DATA
        self.call("LSEEK", LSEEK, f, GUEST_UID, lseek);
        for (what, datasync) in [("FSYNC", 0), ("FSYNC datasync", 1)] {
            let fsync = Body::default().u64(fh).u32(datasync).u32(0);
            self.call(what, FSYNC, f, GUEST_UID, fsync);
        }
        let flush = Body::default().u64(fh).u32(0).u32(0).u64(0);
        self.call("FLUSH", FLUSH, f, GUEST_UID, flush);
        let setxattr = Body::default().u32(1).u32(0).name("user.moat").bytes(b"v");
        self.call("SETXATTR user.moat", SETXATTR, f, 0, setxattr);
        let listxattr = Body::default().u32(256).u32(0);
        self.call("LISTXATTR", LISTXATTR, f, 0, listxattr);
        let removexattr = Body::default().name("user.moat");
        self.call("REMOVEXATTR", REMOVEXATTR, f, 0, removexattr);
        let release = Body::default().u64(fh).u32(0).u32(0).u64(0);
        self.call("RELEASE", RELEASE, f, GUEST_UID, release);
        let times = Body::default()
            .u32(FATTR_SIZE_ATIME_MTIME)
            .u32(0)
            .u64(0) // fh
            .u64(8192) // size
            .u64(0) // lock_owner
            .u64(1_000_000_000) // atime
            .u64(1_000_000_000) // mtime
            .u64(0) // ctime
            .bytes(&[0; 4 * 3]) // their nsec
            .bytes(&[0; 4 * 5]); // mode, unused, uid, gid, unused
        self.call("SETATTR size+times", SETATTR, f, 0, times);
        let setattr = Body::default()
            .u32(FATTR_MODE_UID_GID)
            .u32(0)
            .bytes(&[0; 8 * 6 + 4 * 3]) // fh, size, lock_owner, a/m/ctime, their nsec
            .u32(0o100600)
            .u32(0)
            .u32(2000)
            .u32(2000)
            .u32(0);
        self.call("SETATTR chmod+chown", SETATTR, f, 0, setattr);
        let symlink = Body::default().name("l").name("f");
        let l = self.node("SYMLINK d/l", SYMLINK, d, GUEST_UID, symlink);
        self.call("READLINK", READLINK, l, 0, Body::default());
        let link = Body::default().u64(f).name("g");
        self.node("LINK d/g", LINK, d, 0, link);
        let rename = Body::default().u64(d).u32(0).u32(0).name("g").name("h");
        self.call("RENAME2 d/g d/h", RENAME2, d, 0, rename);
        let whiteout = Body::default()
            .u32(libc::S_IFCHR)
            .u32(0)
            .u32(0o022)
            .u32(0)
            .name("w");
        self.node("MKNOD d/w (whiteout)", MKNOD, d, 0, whiteout);
        let opened = self.call(
            "OPENDIR d",
            OPENDIR,
            d,
            0,
            Body::default().u32(libc::O_RDONLY as u32).u32(0),
        );
        let dh = opened.as_deref().map_or(0, |b| u64_at(b, 0));
        self.call("READDIRPLUS d", READDIRPLUS, d, 0, read_in(dh, 4096));
        let release = Body::default().u64(dh).u32(0).u32(0).u64(0);
        self.call("RELEASEDIR", RELEASEDIR, d, 0, release);
        self.call("STATFS", STATFS, ROOT, 0, Body::default());
        self.call("UNLINK d/h", UNLINK, d, 0, Body::default().name("h"));
        self.call("RMDIR e", RMDIR, ROOT, 0, Body::default().name("e"));
        // Re-create the link the checks on the host expect.
        let link = Body::default().u64(f).name("h");
        self.node("LINK d/h", LINK, d, 0, link);
        let _ = e;
    }
}

/// A VM config with one virtio-fs share, writable, of `share`, jailed in `root`.
fn vm_config(share: &Path, root: &Path) -> VmmConfig {
    VmmConfig {
        id: "jailed-fs".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: "/unused".into(),
        initramfs: None,
        cmdline: String::new(),
        console_log: "/unused".into(),
        console_log_max_bytes: moat_vmm::config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        api_socket: None,
        vsock: None,
        fs: vec![FsConfig {
            tag: "share".into(),
            shared_dir: share.to_owned(),
            read_only: false,
        }],
        net: None,
        jail: Some(JailConfig {
            root: root.to_owned(),
            seccomp: true,
            mount_namespace: true,
        }),
    }
}

/// In a child process: the device for `dir/share` built, then confined in `dir/root`
/// (mounts, capabilities, filter) as the VMM confines itself, then the driver comes up and
/// the guest works on the share (`Guest::exercise`). Prints the report; exits 0 when every
/// request succeeded.
pub fn confined_child(dir: &Path) -> ! {
    super::in_single_threaded_copy();
    let config = vm_config(&dir.join("share"), &dir.join("root"));
    let share = &config.fs[0];
    let dev = Fs::new(&share.tag, &share.shared_dir, false).expect("fs device");
    let mut guest = Guest::new(dev);
    let jail_config = config.jail.as_ref().expect("jail");
    jail::confine(jail_config, &config).expect("confine");
    jail::lock_down(jail_config, &config).expect("seccomp");
    guest.start();
    guest.exercise();
    println!("{}", guest.report.join("\n"));
    std::io::stdout().flush().expect("flush");
    std::process::exit(if guest.all_ok { 0 } else { 1 });
}
