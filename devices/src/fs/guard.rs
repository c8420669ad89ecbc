//! `GuardedFs`: the filesystem the FUSE server sees. It wraps the passthrough filesystem and,
//! when the share is read-only, refuses every mutating operation with `EROFS` before it
//! reaches the host.
//!
//! Read-only is enforced here, in the backend, not by the guest's mount options: a guest
//! that mounts the share read-write (or a hostile guest kernel) still cannot change a byte
//! of the image layers on the host.
//!
//! On a read-write share (the pod's volumes: host paths) it refuses what would hand the
//! guest's root a way into the host's: device nodes (a guest-made block device of the
//! host's disk; overlayfs whiteouts, 0:0, are fine), setuid files and setgid executables, and file capabilities
//! (`security.capability`), with `EPERM`. The back-end runs as root, so without this a
//! guest could leave a setuid-root binary in a hostPath for a host user to run.
//!
//! The wrapper lists each `FileSystem` method explicitly. Anything not listed falls back to
//! the trait's default (`ENOSYS`, or `ENOTTY` for ioctl), so an operation added to the trait
//! in a later fuse-backend-rs release is refused until someone decides what it means for a
//! read-only share: fail closed.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FsOptions, OpenOptions, SetattrValid, stat64, statvfs64,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use nix::sys::stat::{Mode, umask};

use super::owners::Owners;

/// `access(2)` mask bit for write permission.
const W_OK: u32 = libc::W_OK as u32;

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// Runs `f` and restores the process umask it may change. (umask is process-wide: another
/// thread creating files meanwhile sees whatever `f` set.)
pub fn keeping_umask<T>(f: impl FnOnce() -> T) -> T {
    let old = umask(Mode::from_bits_truncate(0o022));
    umask(old);
    let result = f();
    umask(old);
    result
}

/// Whether `open(2)` flags (as FUSE forwards them) ask for anything but reading.
pub fn open_flags_write(flags: u32) -> bool {
    // FUSE passes the guest's open flags through unchanged (O_CREAT and O_EXCL are handled by
    // the guest kernel; creation arrives as CREATE).
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || (flags & libc::O_TRUNC) != 0
}

/// The passthrough filesystem (or any `FileSystem`), optionally read-only.
pub struct GuardedFs<F> {
    inner: F,
    read_only: bool,
    /// Owners shifted for a pod's user namespace (read-only shares only: `owners`).
    owners: Option<Owners>,
    /// The open flags of each file handle OPEN or CREATE gave. READ and WRITE pass these
    /// down, not the guest's, so the passthrough never changes a descriptor's flags: in
    /// fuse-backend-rs 0.14 a failing `fcntl(F_SETFL)` there closes the handle's
    /// descriptor while the handle keeps its number (a guest could then reach whatever
    /// the back-end opens next under it). A handle not in here (a directory's) is not
    /// read or written.
    open_flags: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

impl<F> GuardedFs<F> {
    pub fn new(inner: F, read_only: bool) -> GuardedFs<F> {
        GuardedFs {
            inner,
            read_only,
            owners: None,
            open_flags: Default::default(),
        }
    }

    /// Reports owners shifted by `owners` (see `super::owners`). Only a read-only share
    /// may shift: nothing is then ever created or changed with a shifted id.
    pub fn with_owners(mut self, owners: Option<Owners>) -> GuardedFs<F> {
        assert!(
            owners.is_none() || self.read_only,
            "owners are shifted on read-only shares only"
        );
        self.owners = owners;
        self
    }

    fn shifted(&self, mut st: stat64) -> stat64 {
        if let Some(o) = &self.owners {
            o.shift(&mut st);
        }
        st
    }

    /// Runs `f` (the passthrough's INIT or DESTROY, which (re)import the root) and, for a
    /// read-only share, puts back the process umask that the import sets to 0. A read-write
    /// share keeps 0: the passthrough applies the guest's umask itself and relies on it.
    fn keeping_umask<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.read_only {
            return f();
        }
        keeping_umask(f)
    }

    /// `Err(EROFS)` when the share is read-only.
    fn writable(&self) -> io::Result<()> {
        if self.read_only { Err(erofs()) } else { Ok(()) }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, u32>> {
        self.open_flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flags `handle` was opened with; `EBADF` for one OPEN or CREATE did not give.
    fn flags_of(&self, handle: u64) -> io::Result<u32> {
        self.handles()
            .get(&handle)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

/// `Err(EINVAL)` for `O_PATH`: such a descriptor reads and writes nothing, and the
/// passthrough cannot serve I/O on it safely.
fn not_o_path(flags: u32) -> io::Result<()> {
    if flags & libc::O_PATH as u32 != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

fn eperm() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// `Err(EPERM)` for a mode that would make a setuid file, or a setgid one that is not a
/// directory (a setgid directory only passes its group on, and shared volumes use it).
fn unprivileged_mode(mode: u32) -> io::Result<()> {
    let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
    if mode & libc::S_ISUID != 0 || (mode & libc::S_ISGID != 0 && !is_dir) {
        return Err(eperm());
    }
    Ok(())
}

/// `Err(EPERM)` for a device node; an overlayfs whiteout (a character device 0:0, which
/// opens nothing) is fine, so overlay upper dirs work on volumes.
fn not_a_device(mode: u32, rdev: u32) -> io::Result<()> {
    match mode & libc::S_IFMT {
        libc::S_IFCHR if rdev == 0 => Ok(()),
        libc::S_IFCHR | libc::S_IFBLK => Err(eperm()),
        _ => Ok(()),
    }
}

/// `Err(EPERM)` for the file capability xattr.
fn not_a_file_capability(name: &CStr) -> io::Result<()> {
    if name.to_bytes() == b"security.capability" {
        return Err(eperm());
    }
    Ok(())
}

impl<F: FileSystem> FileSystem for GuardedFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let want = self.keeping_umask(|| self.inner.init(capable))?;
        // Image layers are read-only: no write-back cache, whatever the inner filesystem says.
        Ok(if self.read_only {
            want - FsOptions::WRITEBACK_CACHE
        } else {
            want
        })
    }

    fn destroy(&self) {
        self.keeping_umask(|| self.inner.destroy())
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let mut e = self.inner.lookup(ctx, parent, name)?;
        e.attr = self.shifted(e.attr);
        Ok(e)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let (st, timeout) = self.inner.getattr(ctx, inode, handle)?;
        Ok((self.shifted(st), timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        if valid.contains(SetattrValid::MODE) {
            unprivileged_mode(attr.st_mode)?;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        not_a_device(mode, rdev)?;
        unprivileged_mode(mode)?;
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        unprivileged_mode(mode | libc::S_IFDIR)?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if open_flags_write(flags) {
            self.writable()?;
        }
        not_o_path(flags)?;
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        if let Some(h) = opened.0 {
            let h: u64 = h.into();
            self.handles().insert(h, flags);
            return Ok((Some(h.into()), opened.1, opened.2));
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        unprivileged_mode(args.mode)?;
        not_o_path(args.flags)?;
        let flags = args.flags;
        let (entry, handle, opts, passthrough) = self.inner.create(ctx, parent, name, args)?;
        let handle = handle.map(|h| {
            let h: u64 = h.into();
            self.handles().insert(h, flags);
            h.into()
        });
        Ok((entry, handle, opts, passthrough))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let h: u64 = handle.into();
        let flags = self.flags_of(h)?;
        self.inner
            .read(ctx, inode, h.into(), w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let h: u64 = handle.into();
        let flags = self.flags_of(h)?;
        self.inner.write(
            ctx,
            inode,
            h.into(),
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let h: u64 = handle.into();
        self.handles().remove(&h);
        self.inner.release(
            ctx,
            inode,
            flags,
            h.into(),
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        not_a_file_capability(name)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.owners.is_none() {
            return self
                .inner
                .readdirplus(ctx, inode, handle, size, offset, add_entry);
        }
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, mut e| {
                e.attr = self.shifted(e.attr);
                add_entry(d, e)
            })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        // access(2): "EROFS: write permission was requested for a file on a read-only
        // filesystem".
        if mask & W_OK != 0 {
            self.writable()?;
        }
        match &self.owners {
            Some(o) => self.inner.access(&o.caller(ctx), inode, mask),
            None => self.inner.access(ctx, inode, mask),
        }
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        // Advisory locks change no data: allowed on a read-only share, as on any filesystem.
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // An ioctl may change anything (FS_IOC_SETFLAGS, ...): none on a read-only share.
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

/// Serializes the tests that make the passthrough (re)import its root, which flips the
/// process umask, so that the umask test sees only its own changes.
#[cfg(test)]
pub fn umask_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use fuse_backend_rs::api::filesystem::ROOT_ID;
    use fuse_backend_rs::passthrough::{Config, PassthroughFs};

    use super::*;

    fn share(read_only: bool) -> (tempfile::TempDir, GuardedFs<PassthroughFs>) {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("file"), b"layer data").expect("write file");
        fs::create_dir(dir.path().join("dir")).expect("mkdir");
        let cfg = Config {
            root_dir: dir.path().to_str().expect("utf-8 tempdir").to_owned(),
            xattr: true,
            ..Config::default()
        };
        let inner = PassthroughFs::new(cfg).expect("passthrough");
        let fs = GuardedFs::new(inner, read_only);
        // (A read-write share leaves umask 0 behind: not in this test process.)
        let _umask = umask_test_lock();
        keeping_umask(|| fs.init(FsOptions::empty())).expect("init");
        (dir, fs)
    }

    fn name(s: &str) -> CString {
        CString::new(s).expect("name")
    }

    #[test]
    fn a_read_only_share_reports_owners_shifted_for_a_user_namespace() {
        let (dir, fs) = share(true);
        let owner = fs::metadata(dir.path().join("file")).expect("meta");
        use std::os::unix::fs::MetadataExt;
        let (uid, gid) = (owner.uid(), owner.gid());
        let ranges = |base| {
            vec![super::super::owners::IdRange {
                inside: 0,
                outside: base,
                len: u32::MAX - base,
            }]
        };
        let fs = fs.with_owners(Some(Owners {
            uids: ranges(100_000),
            gids: ranges(200_000),
        }));
        let ctx = Context::default();
        let e = fs.lookup(&ctx, ROOT_ID, &name("file")).expect("lookup");
        assert_eq!(
            (e.attr.st_uid, e.attr.st_gid),
            (uid + 100_000, gid + 200_000)
        );
        let (st, _) = fs.getattr(&ctx, e.inode, None).expect("getattr");
        assert_eq!((st.st_uid, st.st_gid), (uid + 100_000, gid + 200_000));
        let (handle, _) = fs.opendir(&ctx, ROOT_ID, 0).expect("opendir");
        let mut seen = Vec::new();
        fs.readdirplus(
            &ctx,
            ROOT_ID,
            handle.unwrap_or_default(),
            4096,
            0,
            &mut |d, e| {
                seen.push((d.name.to_vec(), e.attr.st_uid));
                Ok(1)
            },
        )
        .expect("readdirplus");
        assert!(
            seen.iter()
                .any(|(n, u)| n.as_slice() == b"file" && *u == uid + 100_000),
            "{seen:?}"
        );
    }

    fn errno(r: io::Result<impl Sized>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn read_only_init_keeps_the_process_umask() {
        let _umask = umask_test_lock();
        let before = umask(Mode::from_bits_truncate(0o022));
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config {
            root_dir: dir.path().to_str().expect("utf-8 tempdir").to_owned(),
            ..Config::default()
        };
        let fs = GuardedFs::new(PassthroughFs::<()>::new(cfg).expect("passthrough"), true);
        fs.init(FsOptions::empty()).expect("init");
        fs.destroy();
        let after = umask(before);
        assert_eq!(after.bits(), 0o022, "the import left umask 0 behind");
    }

    #[test]
    fn write_open_flags() {
        assert!(!open_flags_write(libc::O_RDONLY as u32));
        assert!(!open_flags_write(
            (libc::O_RDONLY | libc::O_NONBLOCK) as u32
        ));
        assert!(!open_flags_write(
            (libc::O_RDONLY | libc::O_DIRECTORY) as u32
        ));
        assert!(open_flags_write(libc::O_WRONLY as u32));
        assert!(open_flags_write(libc::O_RDWR as u32));
        assert!(open_flags_write((libc::O_RDONLY | libc::O_TRUNC) as u32));
    }

    #[test]
    fn read_only_refuses_every_mutation_with_erofs() {
        let (dir, fs) = share(true);
        let ctx = Context::default();
        let root = ROOT_ID;
        let file = fs.lookup(&ctx, root, &name("file")).expect("lookup file");
        let subdir = fs.lookup(&ctx, root, &name("dir")).expect("lookup dir");
        let erofs = Some(libc::EROFS);

        assert_eq!(errno(fs.mkdir(&ctx, root, &name("new"), 0o755, 0)), erofs);
        assert_eq!(
            errno(fs.mknod(&ctx, root, &name("n"), libc::S_IFREG | 0o644, 0, 0)),
            erofs
        );
        assert_eq!(
            errno(fs.symlink(&ctx, &name("file"), root, &name("l"))),
            erofs
        );
        assert_eq!(errno(fs.link(&ctx, file.inode, root, &name("h"))), erofs);
        assert_eq!(errno(fs.unlink(&ctx, root, &name("file"))), erofs);
        assert_eq!(errno(fs.rmdir(&ctx, root, &name("dir"))), erofs);
        assert_eq!(
            errno(fs.rename(&ctx, root, &name("file"), subdir.inode, &name("moved"), 0)),
            erofs
        );
        let create = CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        assert_eq!(errno(fs.create(&ctx, root, &name("c"), create)), erofs);
        // SAFETY: `stat64` is plain old data; all-zero is a valid value.
        let attr: stat64 = unsafe { std::mem::zeroed() };
        assert_eq!(
            errno(fs.setattr(&ctx, file.inode, attr, None, SetattrValid::SIZE)),
            erofs
        );
        assert_eq!(
            errno(fs.setxattr(&ctx, file.inode, &name("user.x"), b"1", 0)),
            erofs
        );
        assert_eq!(
            errno(fs.removexattr(&ctx, file.inode, &name("user.x"))),
            erofs
        );
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(errno(fs.open(&ctx, file.inode, flags as u32, 0)), erofs);
        }
        assert_eq!(errno(fs.access(&ctx, file.inode, W_OK)), erofs);

        // Nothing changed on the host.
        assert_eq!(
            fs::read(dir.path().join("file")).expect("read"),
            b"layer data"
        );
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "file"]);

        // Reading still works.
        let (handle, _, _) = fs
            .open(&ctx, file.inode, libc::O_RDONLY as u32, 0)
            .expect("open read-only");
        assert!(handle.is_some());
        fs.access(&ctx, file.inode, libc::R_OK as u32)
            .expect("access R_OK");
        fs.getattr(&ctx, file.inode, None).expect("getattr");
    }

    #[test]
    fn read_write_share_passes_mutations_through() {
        let (dir, fs) = share(false);
        let ctx = Context::default();
        fs.mkdir(&ctx, ROOT_ID, &name("made"), 0o755, 0)
            .expect("mkdir on a read-write share");
        let meta = fs::metadata(dir.path().join("made")).expect("made on the host");
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_read_write_share_refuses_devices_setuid_and_file_capabilities() {
        let (dir, fs) = share(false);
        let ctx = Context::default();
        for (what, mode) in [
            ("char device", libc::S_IFCHR | 0o600),
            ("block device", libc::S_IFBLK | 0o600),
            ("setuid file", libc::S_IFREG | libc::S_ISUID | 0o755),
        ] {
            let r = fs.mknod(&ctx, ROOT_ID, &name("node"), mode, 0x0801, 0);
            assert_eq!(errno(r), Some(libc::EPERM), "{what}");
        }
        assert!(!dir.path().join("node").exists());
        fs.mknod(&ctx, ROOT_ID, &name("fifo"), libc::S_IFIFO | 0o600, 0, 0)
            .expect("a fifo is fine");
        fs.mknod(
            &ctx,
            ROOT_ID,
            &name("whiteout"),
            libc::S_IFCHR | 0o600,
            0,
            0,
        )
        .expect("an overlayfs whiteout (0:0) is fine");
        let create = |mode| CreateIn {
            flags: libc::O_WRONLY as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let r = fs.create(
            &ctx,
            ROOT_ID,
            &name("suid"),
            create(libc::S_IFREG | libc::S_ISUID | 0o755),
        );
        assert_eq!(errno(r), Some(libc::EPERM));
        let r = fs.create(
            &ctx,
            ROOT_ID,
            &name("sgid"),
            create(libc::S_IFREG | libc::S_ISGID | 0o755),
        );
        assert_eq!(errno(r), Some(libc::EPERM));
        fs.mkdir(&ctx, ROOT_ID, &name("shared"), libc::S_ISGID | 0o775, 0)
            .expect("a setgid directory is fine");
        // chmod u+s on a file that exists.
        let file = fs.lookup(&ctx, ROOT_ID, &name("file")).expect("lookup");
        let mut attr = file.attr;
        attr.st_mode = libc::S_IFREG | libc::S_ISUID | 0o755;
        let r = fs.setattr(&ctx, file.inode, attr, None, SetattrValid::MODE);
        assert_eq!(errno(r), Some(libc::EPERM));
        attr.st_mode = libc::S_IFREG | 0o640;
        fs.setattr(&ctx, file.inode, attr, None, SetattrValid::MODE)
            .expect("a plain chmod is fine");
        let r = fs.setxattr(&ctx, file.inode, &name("security.capability"), b"\x01", 0);
        assert_eq!(errno(r), Some(libc::EPERM));
        let meta = fs::metadata(dir.path().join("file")).expect("file");
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o640,
            "no setuid on the host"
        );
        assert!(
            xattr::get(dir.path().join("file"), "security.capability")
                .expect("xattr")
                .is_none()
        );
    }
}
