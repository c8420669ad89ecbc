//! The seam in front of the privileged calls the container's setup makes (the idea of
//! youki's `syscall` module): `Linux` makes them, `Recorder` (tests) writes down what would
//! have been made, so the order of mounts, `pivot_root` and capability calls can be checked
//! without root.
//!
//! The `Linux` methods run in a child forked from a multithreaded agent, before `execve`:
//! they take C strings prepared before the fork, allocate nothing on their normal path,
//! take no locks and never log. They report failures as a bare `Errno`.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use seccompiler::sock_filter;

/// Result of one privileged call.
pub(crate) type SysResult<T = ()> = Result<T, Errno>;

/// What `file_kind` found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A directory.
    Dir,
    /// Anything else that exists.
    Other,
}

/// An argv/envp vector: the C strings and the NULL-terminated pointer array `execve` wants,
/// built before the fork.
pub(crate) struct CVec<'a> {
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
    strings: &'a [CString],
    ptrs: Vec<*const libc::c_char>,
}

impl<'a> CVec<'a> {
    /// Builds the pointer array over `strings` (which must outlive it).
    pub(crate) fn new(strings: &'a [CString]) -> Self {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CVec { strings, ptrs }
    }

    /// The strings.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests
    pub(crate) fn strings(&self) -> &[CString] {
        self.strings
    }
}

/// The privileged calls a container's setup makes.
pub(crate) trait Syscall {
    /// unshare(2).
    fn unshare(&self, flags: libc::c_int) -> SysResult;
    /// setns(2) on an open namespace file.
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> SysResult;
    /// mount(2).
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult;
    /// mount(2) on `target`, refusing (ELOOP) a target with a symlink anywhere in its path:
    /// the parent resolved the spec's destinations inside the rootfs, so a symlink there now
    /// was planted since (in a volume shared with another container). The target is
    /// opened with openat2(RESOLVE_NO_SYMLINKS) and mounted on through /proc/self/fd.
    fn mount_no_symlinks(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult;
    /// umount2(2).
    fn umount2(&self, target: &CStr, flags: libc::c_int) -> SysResult;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult;
    /// chroot(2).
    fn chroot(&self, path: &CStr) -> SysResult;
    /// chdir(2).
    fn chdir(&self, path: &CStr) -> SysResult;
    /// `mkdir -p` (mode 0755 for what it creates).
    fn mkdir_all(&self, path: &CStr) -> SysResult;
    /// Creates an empty file (and its parent directories) unless something is there.
    fn create_file(&self, path: &CStr) -> SysResult;
    /// What is at `path` (stat(2), following symlinks).
    fn file_kind(&self, path: &CStr) -> SysResult<FileKind>;
    /// The MS_* flags of the mount `path` is on (statvfs(2)), for a remount keeping them.
    fn mount_flags(&self, path: &CStr) -> SysResult<libc::c_ulong>;
    /// mknod(2), then chown(2).
    fn mknod(
        &self,
        path: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
        uid: u32,
        gid: u32,
    ) -> SysResult;
    /// symlink(2); an existing link is left alone.
    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult;
    /// Writes `data` to an existing file (sysctls, oom_score_adj).
    fn write_file(&self, path: &CStr, data: &[u8]) -> SysResult;
    /// sethostname(2).
    fn sethostname(&self, name: &CStr) -> SysResult;
    /// setdomainname(2).
    fn setdomainname(&self, name: &CStr) -> SysResult;
    /// setrlimit(2).
    fn setrlimit(&self, resource: libc::c_int, soft: u64, hard: u64) -> SysResult;
    /// Opens a pty in the container's devpts, makes it the controlling terminal and stdio,
    /// binds it over /dev/console when `console` is given, and sends the master to the
    /// parent over `socket` (SCM_RIGHTS).
    /// `size` is the window's (rows, columns), set before the process can read it.
    fn setup_console(
        &self,
        socket: RawFd,
        console: Option<&CStr>,
        size: Option<(u16, u16)>,
    ) -> SysResult;
    /// Drops `cap` from the bounding set.
    fn drop_bounding(&self, cap: Capability) -> SysResult;
    /// PR_SET_KEEPCAPS.
    fn set_keepcaps(&self, keep: bool) -> SysResult;
    /// setgroups(2).
    fn setgroups(&self, gids: &[libc::gid_t]) -> SysResult;
    /// setresgid(2) with all three the same.
    fn setresgid(&self, gid: libc::gid_t) -> SysResult;
    /// setresuid(2) with all three the same.
    fn setresuid(&self, uid: libc::uid_t) -> SysResult;
    /// capset(2) of one of effective, permitted, inheritable.
    fn set_caps(&self, set: CapSet, value: &CapsHashSet) -> SysResult;
    /// Clears the ambient set, then raises each of `caps`.
    fn set_ambient(&self, caps: &[Capability]) -> SysResult;
    /// PR_SET_NO_NEW_PRIVS.
    fn set_no_new_privs(&self) -> SysResult;
    /// umask(2).
    fn umask(&self, mask: libc::mode_t);
    /// mount_setattr(2) with AT_RECURSIVE: makes the mount at `target` and every mount
    /// below it read-only (a recursive read-only bind, the CRI's `recursive_read_only`).
    fn make_readonly_recursive(&self, target: &CStr) -> SysResult;
    /// seccomp(SECCOMP_SET_MODE_FILTER).
    fn seccomp(&self, program: &[sock_filter], flags: libc::c_uint) -> SysResult;
    /// execve(2); returns only when it fails.
    fn execve(&self, path: &CStr, argv: &CVec<'_>, envp: &CVec<'_>) -> Errno;
    /// clone(2) with CLONE_PARENT, like fork(2) otherwise: the new process is a sibling of
    /// the caller (the agent's child, with the exit signal the caller has). Returns its
    /// pid in the caller, 0 in it.
    fn clone_parent(&self) -> SysResult<i32>;
}

/// The real calls.
pub(crate) struct Linux;

fn check(ret: libc::c_int) -> SysResult {
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

fn caps_errno() -> Errno {
    match Errno::last() {
        Errno::UnknownErrno => Errno::EPERM,
        e => e,
    }
}

/// Applies `f` to every prefix of `path` that ends at a `/` (and to `path` itself), using a
/// stack buffer: no allocation.
fn for_each_prefix(path: &CStr, mut f: impl FnMut(&CStr) -> SysResult) -> SysResult {
    let bytes = path.to_bytes();
    let mut buf = [0u8; libc::PATH_MAX as usize];
    if bytes.len() >= buf.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'/' && i > 0 && bytes[i - 1] != b'/' {
            buf[..i].copy_from_slice(&bytes[..i]);
            buf[i] = 0;
            let prefix = CStr::from_bytes_until_nul(&buf[..=i]).map_err(|_| Errno::EINVAL)?;
            f(prefix)?;
        }
    }
    f(path)
}

impl Syscall for Linux {
    fn unshare(&self, flags: libc::c_int) -> SysResult {
        // SAFETY: unshare takes flags only.
        check(unsafe { libc::unshare(flags) })
    }

    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> SysResult {
        // SAFETY: setns takes an fd and flags; a bad fd is an error, not UB.
        check(unsafe { libc::setns(fd, nstype) })
    }

    fn make_readonly_recursive(&self, target: &CStr) -> SysResult {
        /// `struct mount_attr` of linux/mount.h.
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 1;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: target is NUL-terminated and attr is a valid mount_attr of the size given;
        // both outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target.as_ptr(),
                (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult {
        // SAFETY: every pointer is a NUL-terminated string that outlives the call, or NULL.
        check(unsafe {
            libc::mount(
                opt_ptr(source),
                target.as_ptr(),
                opt_ptr(fstype),
                flags,
                opt_ptr(data).cast(),
            )
        })
    }

    fn mount_no_symlinks(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult {
        #[repr(C)]
        struct OpenHow {
            flags: u64,
            mode: u64,
            resolve: u64,
        }
        const RESOLVE_NO_SYMLINKS: u64 = 0x04;
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE_NO_SYMLINKS,
        };
        // SAFETY: target is a valid C string and `how` a valid open_how of the given size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                target.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return match Errno::last() {
                // Kernels before 5.6: mount by path.
                Errno::ENOSYS => self.mount(source, target, fstype, flags, data),
                e => Err(e),
            };
        }
        let fd = fd as RawFd;
        let mut buf = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        let n = write_decimal(&mut buf[prefix.len()..], fd as u32);
        let result = match CStr::from_bytes_until_nul(&buf[..prefix.len() + n + 1]) {
            Ok(path) => self.mount(source, path, fstype, flags, data),
            Err(_) => Err(Errno::EINVAL),
        };
        // SAFETY: fd was opened above.
        unsafe { libc::close(fd) };
        result
    }

    fn umount2(&self, target: &CStr, flags: libc::c_int) -> SysResult {
        // SAFETY: target is a valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) })
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult {
        // SAFETY: both arguments are valid C strings; glibc has no wrapper, so the raw call.
        let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn chroot(&self, path: &CStr) -> SysResult {
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chroot(path.as_ptr()) })
    }

    fn chdir(&self, path: &CStr) -> SysResult {
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn mkdir_all(&self, path: &CStr) -> SysResult {
        for_each_prefix(path, |p| {
            // SAFETY: p is a valid C string.
            match check(unsafe { libc::mkdir(p.as_ptr(), 0o755) }) {
                Ok(()) => Ok(()),
                Err(Errno::EEXIST) => {
                    // Never build through a symlink (see mount_no_symlinks).
                    // SAFETY: an all-zero stat is a valid value to be overwritten.
                    let mut st: libc::stat = unsafe { std::mem::zeroed() };
                    // SAFETY: p is a valid C string; st a valid out-pointer.
                    check(unsafe { libc::lstat(p.as_ptr(), &mut st) })?;
                    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                        Err(Errno::ELOOP)
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            }
        })?;
        match self.file_kind(path)? {
            FileKind::Dir => Ok(()),
            FileKind::Other => Err(Errno::ENOTDIR),
        }
    }

    fn create_file(&self, path: &CStr) -> SysResult {
        if self.file_kind(path).is_ok() {
            return Ok(());
        }
        let bytes = path.to_bytes();
        if let Some(slash) = bytes.iter().rposition(|&b| b == b'/')
            && slash > 0
        {
            let mut buf = [0u8; libc::PATH_MAX as usize];
            if slash >= buf.len() {
                return Err(Errno::ENAMETOOLONG);
            }
            buf[..slash].copy_from_slice(&bytes[..slash]);
            let parent = CStr::from_bytes_until_nul(&buf[..=slash]).map_err(|_| Errno::EINVAL)?;
            self.mkdir_all(parent)?;
        }
        // SAFETY: path is a valid C string; the returned fd is closed right away.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        check(fd)?;
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
        Ok(())
    }

    fn file_kind(&self, path: &CStr) -> SysResult<FileKind> {
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string; st is a valid out-pointer.
        check(unsafe { libc::stat(path.as_ptr(), &mut st) })?;
        Ok(if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            FileKind::Dir
        } else {
            FileKind::Other
        })
    }

    fn mount_flags(&self, path: &CStr) -> SysResult<libc::c_ulong> {
        // SAFETY: an all-zero statvfs is a valid value to be overwritten.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string; st is a valid out-pointer.
        check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
        let mut flags = 0;
        for (st_flag, ms_flag) in [
            (libc::ST_RDONLY, libc::MS_RDONLY),
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if st.f_flag & st_flag != 0 {
                flags |= ms_flag;
            }
        }
        Ok(flags)
    }

    fn mknod(
        &self,
        path: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
        uid: u32,
        gid: u32,
    ) -> SysResult {
        // SAFETY: path is a valid C string.
        match check(unsafe { libc::mknod(path.as_ptr(), mode, dev) }) {
            Ok(()) => {}
            // A node already there (a bind from the image): leave it.
            Err(Errno::EEXIST) => return Ok(()),
            Err(e) => return Err(e),
        }
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chown(path.as_ptr(), uid, gid) })
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult {
        // SAFETY: both are valid C strings.
        match check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn write_file(&self, path: &CStr, data: &[u8]) -> SysResult {
        // SAFETY: path is a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        check(fd)?;
        // SAFETY: data is a valid buffer of data.len() bytes; fd is ours.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        let err = Errno::last();
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        if n < 0 {
            Err(err)
        } else if n as usize != data.len() {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn sethostname(&self, name: &CStr) -> SysResult {
        let b = name.to_bytes();
        // SAFETY: b is a valid buffer of b.len() bytes.
        check(unsafe { libc::sethostname(b.as_ptr().cast(), b.len()) })
    }

    fn setdomainname(&self, name: &CStr) -> SysResult {
        let b = name.to_bytes();
        // SAFETY: b is a valid buffer of b.len() bytes.
        check(unsafe { libc::setdomainname(b.as_ptr().cast(), b.len()) })
    }

    fn setrlimit(&self, resource: libc::c_int, soft: u64, hard: u64) -> SysResult {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: lim is a valid rlimit; the resource number comes from a fixed table.
        check(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &lim) })
    }

    fn setup_console(
        &self,
        socket: RawFd,
        console: Option<&CStr>,
        size: Option<(u16, u16)>,
    ) -> SysResult {
        // SAFETY: plain syscalls on fds this function opens; buffers are on the stack and
        // sized for what the kernel writes.
        unsafe {
            let master = libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            check(master)?;
            let unlock: libc::c_int = 0;
            check(libc::ioctl(master, libc::TIOCSPTLCK, &unlock))?;
            let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            check(slave)?;
            if let Some((rows, cols)) = size {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                check(libc::ioctl(master, libc::TIOCSWINSZ, &ws))?;
            }
            if libc::setsid() < 0 {
                return Err(Errno::last());
            }
            check(libc::ioctl(slave, libc::TIOCSCTTY, 0))?;
            for fd in 0..3 {
                check(libc::dup2(slave, fd))?;
            }
            if let Some(console) = console {
                // Bind the pty over /dev/console, through /proc/self/fd/N.
                let mut buf = [0u8; 32];
                let prefix = b"/proc/self/fd/";
                buf[..prefix.len()].copy_from_slice(prefix);
                let n = write_decimal(&mut buf[prefix.len()..], slave as u32);
                let src = CStr::from_bytes_until_nul(&buf[..prefix.len() + n + 1])
                    .map_err(|_| Errno::EINVAL)?;
                self.create_file(console)?;
                self.mount(Some(src), console, None, libc::MS_BIND, None)?;
            }
            if slave > 2 {
                libc::close(slave);
            }
            // Send the master to the parent.
            let mut byte = [0u8; 1];
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut cmsg_buf = [0u64; 8];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), master);
            if libc::sendmsg(socket, &msg, 0) < 0 {
                return Err(Errno::last());
            }
            libc::close(master);
        }
        Ok(())
    }

    fn drop_bounding(&self, cap: Capability) -> SysResult {
        caps::drop(None, CapSet::Bounding, cap).map_err(|_| caps_errno())
    }

    fn set_keepcaps(&self, keep: bool) -> SysResult {
        caps::securebits::set_keepcaps(keep).map_err(|_| caps_errno())
    }

    // The id calls are raw system calls, for the calling thread only: glibc's wrappers
    // signal every thread glibc knows of, and a child cloned (not forked through glibc)
    // from the multithreaded agent still lists the agent's threads.
    fn setgroups(&self, gids: &[libc::gid_t]) -> SysResult {
        // SAFETY: gids is a valid slice of gids.len() gids.
        let r = unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn setresgid(&self, gid: libc::gid_t) -> SysResult {
        // SAFETY: plain syscall.
        let r = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn setresuid(&self, uid: libc::uid_t) -> SysResult {
        // SAFETY: plain syscall.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn set_caps(&self, set: CapSet, value: &CapsHashSet) -> SysResult {
        caps::set(None, set, value).map_err(|_| caps_errno())
    }

    fn set_ambient(&self, caps: &[Capability]) -> SysResult {
        caps::clear(None, CapSet::Ambient).map_err(|_| caps_errno())?;
        for &cap in caps {
            caps::raise(None, CapSet::Ambient, cap).map_err(|_| caps_errno())?;
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> SysResult {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    fn umask(&self, mask: libc::mode_t) {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask) };
    }

    fn seccomp(&self, program: &[sock_filter], flags: libc::c_uint) -> SysResult {
        #[repr(C)]
        struct SockFprog {
            len: libc::c_ushort,
            filter: *const sock_filter,
        }
        let prog = SockFprog {
            len: libc::c_ushort::try_from(program.len()).map_err(|_| Errno::E2BIG)?,
            filter: program.as_ptr(),
        };
        // SAFETY: prog points at `program`, which outlives the call; the kernel copies it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const SockFprog,
            )
        };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn execve(&self, path: &CStr, argv: &CVec<'_>, envp: &CVec<'_>) -> Errno {
        // SAFETY: argv and envp are NULL-terminated arrays of pointers to C strings that
        // outlive the call (CVec keeps them).
        unsafe { libc::execve(path.as_ptr(), argv.ptrs.as_ptr(), envp.ptrs.as_ptr()) };
        Errno::last()
    }

    fn clone_parent(&self) -> SysResult<i32> {
        // SAFETY: with no stack, clone(2) continues both processes where the call returns,
        // as fork(2) does; the caller is a single-threaded child forked through the C library.
        // No exit signal is given: with CLONE_PARENT the new process takes the caller's.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_PARENT as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(r as i32)
        }
    }
}

/// Writes `n` in decimal to `buf` followed by a NUL; returns the number of digits.
pub(crate) fn write_decimal(buf: &mut [u8], mut n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
    len
}

/// A call the setup made, as `Recorder` writes it down.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Unshare(libc::c_int),
    Setns(RawFd, libc::c_int),
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: libc::c_ulong,
        data: Option<String>,
    },
    Umount(String, libc::c_int),
    ReadonlyRecursive(String),
    PivotRoot(String, String),
    Chroot(String),
    Chdir(String),
    MkdirAll(String),
    CreateFile(String),
    Mknod(String, libc::mode_t, libc::dev_t),
    Symlink(String, String),
    WriteFile(String, String),
    Hostname(String),
    Domainname(String),
    Rlimit(libc::c_int, u64, u64),
    Console,
    DropBounding(Capability),
    KeepCaps(bool),
    Setgroups(Vec<libc::gid_t>),
    Setresgid(libc::gid_t),
    Setresuid(libc::uid_t),
    SetCaps(&'static str, Vec<Capability>),
    Ambient(Vec<Capability>),
    NoNewPrivs,
    Umask(libc::mode_t),
    Seccomp(usize, libc::c_uint),
    Execve(String, Vec<String>, Vec<String>),
    CloneParent,
}

/// Makes the calls matching the predicate fail with the errno.
#[cfg(test)]
pub(crate) type FailRule = (fn(&Call) -> bool, Errno);

/// Records calls instead of making them. `fail` makes the first call matching a predicate
/// fail with an errno; `dirs` lists the paths `file_kind` calls directories (anything
/// else under `missing` is absent, the rest are files).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder {
    pub calls: std::cell::RefCell<Vec<Call>>,
    pub fail: Vec<FailRule>,
    pub dirs: Vec<String>,
    pub missing: Vec<String>,
}

#[cfg(test)]
impl Recorder {
    fn push(&self, c: Call) -> SysResult {
        let err = self.fail.iter().find(|(f, _)| f(&c)).map(|(_, e)| *e);
        self.calls.borrow_mut().push(c);
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The recorded calls.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

#[cfg(test)]
fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

#[cfg(test)]
fn sorted(set: &CapsHashSet) -> Vec<Capability> {
    let mut v: Vec<_> = set.iter().copied().collect();
    v.sort_by_key(|c| c.index());
    v
}

#[cfg(test)]
impl Syscall for Recorder {
    fn unshare(&self, flags: libc::c_int) -> SysResult {
        self.push(Call::Unshare(flags))
    }
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> SysResult {
        self.push(Call::Setns(fd, nstype))
    }
    fn make_readonly_recursive(&self, target: &CStr) -> SysResult {
        self.push(Call::ReadonlyRecursive(s(target)))
    }

    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult {
        self.push(Call::Mount {
            source: source.map(s),
            target: s(target),
            fstype: fstype.map(s),
            flags,
            data: data.map(s),
        })
    }
    fn mount_no_symlinks(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult {
        self.mount(source, target, fstype, flags, data)
    }
    fn umount2(&self, target: &CStr, flags: libc::c_int) -> SysResult {
        self.push(Call::Umount(s(target), flags))
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> SysResult {
        self.push(Call::PivotRoot(s(new_root), s(put_old)))
    }
    fn chroot(&self, path: &CStr) -> SysResult {
        self.push(Call::Chroot(s(path)))
    }
    fn chdir(&self, path: &CStr) -> SysResult {
        self.push(Call::Chdir(s(path)))
    }
    fn mkdir_all(&self, path: &CStr) -> SysResult {
        self.push(Call::MkdirAll(s(path)))
    }
    fn create_file(&self, path: &CStr) -> SysResult {
        self.push(Call::CreateFile(s(path)))
    }
    fn file_kind(&self, path: &CStr) -> SysResult<FileKind> {
        let p = s(path);
        if self.missing.contains(&p) {
            Err(Errno::ENOENT)
        } else if self.dirs.contains(&p) {
            Ok(FileKind::Dir)
        } else {
            Ok(FileKind::Other)
        }
    }
    fn mount_flags(&self, _path: &CStr) -> SysResult<libc::c_ulong> {
        Ok(libc::MS_NOSUID | libc::MS_NODEV)
    }
    fn mknod(
        &self,
        path: &CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
        _uid: u32,
        _gid: u32,
    ) -> SysResult {
        self.push(Call::Mknod(s(path), mode, dev))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> SysResult {
        self.push(Call::Symlink(s(target), s(link)))
    }
    fn write_file(&self, path: &CStr, data: &[u8]) -> SysResult {
        self.push(Call::WriteFile(
            s(path),
            String::from_utf8_lossy(data).into(),
        ))
    }
    fn sethostname(&self, name: &CStr) -> SysResult {
        self.push(Call::Hostname(s(name)))
    }
    fn setdomainname(&self, name: &CStr) -> SysResult {
        self.push(Call::Domainname(s(name)))
    }
    fn setrlimit(&self, resource: libc::c_int, soft: u64, hard: u64) -> SysResult {
        self.push(Call::Rlimit(resource, soft, hard))
    }
    fn setup_console(
        &self,
        _socket: RawFd,
        _console: Option<&CStr>,
        _size: Option<(u16, u16)>,
    ) -> SysResult {
        self.push(Call::Console)
    }
    fn drop_bounding(&self, cap: Capability) -> SysResult {
        self.push(Call::DropBounding(cap))
    }
    fn set_keepcaps(&self, keep: bool) -> SysResult {
        self.push(Call::KeepCaps(keep))
    }
    fn setgroups(&self, gids: &[libc::gid_t]) -> SysResult {
        self.push(Call::Setgroups(gids.to_vec()))
    }
    fn setresgid(&self, gid: libc::gid_t) -> SysResult {
        self.push(Call::Setresgid(gid))
    }
    fn setresuid(&self, uid: libc::uid_t) -> SysResult {
        self.push(Call::Setresuid(uid))
    }
    fn set_caps(&self, set: CapSet, value: &CapsHashSet) -> SysResult {
        let name = match set {
            CapSet::Effective => "effective",
            CapSet::Permitted => "permitted",
            CapSet::Inheritable => "inheritable",
            CapSet::Ambient => "ambient",
            CapSet::Bounding => "bounding",
        };
        self.push(Call::SetCaps(name, sorted(value)))
    }
    fn set_ambient(&self, caps: &[Capability]) -> SysResult {
        self.push(Call::Ambient(caps.to_vec()))
    }
    fn set_no_new_privs(&self) -> SysResult {
        self.push(Call::NoNewPrivs)
    }
    fn umask(&self, mask: libc::mode_t) {
        let _ = self.push(Call::Umask(mask));
    }
    fn seccomp(&self, program: &[sock_filter], flags: libc::c_uint) -> SysResult {
        self.push(Call::Seccomp(program.len(), flags))
    }
    fn execve(&self, path: &CStr, argv: &CVec<'_>, envp: &CVec<'_>) -> Errno {
        let v = |c: &CVec<'_>| c.strings().iter().map(|x| s(x)).collect::<Vec<_>>();
        match self.push(Call::Execve(s(path), v(argv), v(envp))) {
            Err(e) => e,
            Ok(()) => Errno::ENOEXEC,
        }
    }
    /// As the new process (0).
    fn clone_parent(&self) -> SysResult<i32> {
        self.push(Call::CloneParent).map(|()| 0)
    }
}
