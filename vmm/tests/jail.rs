//! Confinement of the VMM process (`moat_vmm::jail`). A jail cannot be left and a seccomp
//! filter cannot be removed, so each case runs in a child process: this test binary run
//! again for that one test, with `MOAT_JAIL_CHILD` saying what the child does; the parent
//! checks how the child ended and what it printed.
//!
//! - the seccomp filter: what the VMM does passes; a forbidden syscall ends the process
//!   with exit status 159 and a line naming the syscall;
//! - the mount namespace and capabilities: only the kept paths are visible, read-only where
//!   asked, with only the kept capabilities (needs root; skipped otherwise); what the host
//!   mounts under a kept directory later shows in the jail;
//! - virtio-fs confined: a guest's everyday FUSE requests on a writable share, served by the
//!   device's worker under the filter, with the capabilities a writable share keeps (needs
//!   root);
//! - a whole VM run confined, through `moat_vmm::run`: the smoke payload answers a host
//!   connection over vsock, and the control socket a status request, with the jail and the
//!   filter on (needs root and /dev/kvm). `MOAT_JAIL_SECCOMP=0` runs it without the filter,
//!   for `strace -f` to list what the VMM calls when the allowlist needs revisiting.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "jail/fuse.rs"]
mod fuse;
#[path = "jail/propagation.rs"]
mod propagation;

use moat_vmm::config::{JailConfig, VsockConfig};
use moat_vmm::jail::{self, Keep, caps, seccomp, sigsys};
use moat_vmm::test_utils::payload;
use moat_vmm::{Exit, VmmConfig};

/// Set in a child: which case it runs (the parent sets it; the test functions read it).
const CHILD: &str = "MOAT_JAIL_CHILD";
/// Where a child finds the files its parent prepared.
const DIR: &str = "MOAT_JAIL_DIR";

/// The case this process runs as a child, if it is one.
fn child_case() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// Runs this binary's test `test` as a child doing `case` with `dir`, at most `limit`.
fn run_child(test: &str, case: &str, dir: &Path, limit: Duration) -> Output {
    let exe = std::env::current_exe().expect("this test binary");
    let mut child = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, case)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("child status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("child output");
            panic!(
                "child {case} ran past {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}

/// Goes on in a single-threaded copy of this process: the test harness runs the case on
/// a thread of its own, and the VMM refuses to confine itself while other threads run (they
/// would stay outside the jail). Forks; the copy, holding only this thread, returns; this
/// process waits for it and exits as it did. (glibc keeps malloc usable in a child forked
/// from a threaded process; the other thread, the harness's main, only waits.)
pub fn in_single_threaded_copy() {
    // SAFETY: fork has no preconditions; the child goes on with this thread only.
    match unsafe { libc::fork() } {
        0 => {}
        pid if pid > 0 => {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            std::process::exit(code);
        }
        _ => panic!("fork: {}", std::io::Error::last_os_error()),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn errno_of(rc: libc::c_long) -> Option<i32> {
    (rc < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

// ----- the seccomp filter -----

/// The forbidden syscalls tried, one child each: (case, syscall number).
const FORBIDDEN: [(&str, libc::c_long); 3] = [
    ("inet-socket", libc::SYS_socket),
    ("execve", libc::SYS_execve),
    ("tty-ioctl", libc::SYS_ioctl),
];

/// In the child: the filter for every group on, what the VMM does works, then `case`'s
/// forbidden syscall (which must not return).
fn seccomp_child(case: &str, dir: &Path) {
    // Bound before the filter, as the VMM binds its sockets while it builds the VM.
    let listener = std::os::unix::net::UnixListener::bind(dir.join(format!("{case}.sock")))
        .expect("bind a Unix socket");
    sigsys::install_handler().expect("SIGSYS handler");
    seccomp::install(&seccomp::Groups::all()).expect("install the filter");

    // Threads start (clone3 is refused with ENOSYS, glibc falls back to clone) and end.
    let t = std::thread::Builder::new()
        .name("jail-worker".into())
        .spawn(|| 6 * 7)
        .expect("spawn a thread under the filter");
    assert_eq!(t.join().expect("join"), 42);
    // SAFETY: clone3 with a null argument block: the filter answers before the kernel
    // would read it.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    assert_eq!(errno_of(rc), Some(libc::ENOSYS), "clone3 is refused");
    // Eventfds, epoll, Unix sockets (the vsock muxer's dial), FIONBIO, files by path.
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    evt.write(3).expect("eventfd write");
    assert_eq!(evt.read().expect("eventfd read"), 3);
    let _epoll = vmm_sys_util::epoll::Epoll::new().expect("epoll");
    let a = UnixStream::connect(dir.join(format!("{case}.sock"))).expect("socket + connect");
    let (mut b, _) = listener.accept().expect("accept4");
    a.set_nonblocking(true).expect("FIONBIO");
    (&a).write_all(b"x").expect("send");
    let mut byte = [0u8; 1];
    b.read_exact(&mut byte).expect("recv");
    a.shutdown(std::net::Shutdown::Both).expect("shutdown");
    let status = std::fs::read_to_string("/proc/self/status").expect("read a file");
    assert!(status.contains("Seccomp:\t2"), "filter mode in {status}");
    println!("allowed: ok");
    std::io::stdout().flush().expect("flush");

    // SAFETY: each call is made only to be refused by the filter; none would touch memory
    // of ours in a way that matters (execve's arguments are valid empty C arrays).
    unsafe {
        match case {
            "inet-socket" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "execve" => {
                let argv = [std::ptr::null::<libc::c_char>()];
                libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), argv.as_ptr());
            }
            "tty-ioctl" => {
                let mut ws: libc::winsize = std::mem::zeroed();
                libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws);
            }
            other => panic!("unknown case {other}"),
        }
    }
    println!("the forbidden syscall returned");
    std::process::exit(3);
}

#[test]
fn seccomp_allows_what_the_vmm_does_and_stops_it_on_anything_else() {
    const TEST: &str = "seccomp_allows_what_the_vmm_does_and_stops_it_on_anything_else";
    if let Some(case) = child_case() {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("MOAT_JAIL_DIR"));
        seccomp_child(&case, &dir);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, nr) in FORBIDDEN {
        let out = run_child(TEST, case, dir.path(), Duration::from_secs(60));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            stdout.contains("allowed: ok"),
            "{case}: the allowed calls failed under the filter:\n{stdout}\n{stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(sigsys::BLOCKED_SYSCALL_EXIT),
            "{case}: {:?}\n{stdout}\n{stderr}",
            out.status
        );
        let line = format!("moat-vmm: seccomp: syscall {nr} is not allowed");
        assert!(stderr.contains(&line), "{case}: no {line:?} in:\n{stderr}");
    }
}

// ----- the mount namespace and capabilities -----

/// The parent's layout under `MOAT_JAIL_DIR`.
struct Layout {
    /// The jail root, inside a kept directory.
    root: PathBuf,
    rw: PathBuf,
    ro: PathBuf,
    /// Kept read-only inside the writable `rw`.
    sealed: PathBuf,
    outside: PathBuf,
}

impl Layout {
    fn at(dir: &Path) -> Layout {
        Layout {
            root: dir.join("kept/rw/jail"),
            rw: dir.join("kept/rw"),
            ro: dir.join("kept/ro"),
            sealed: dir.join("kept/rw/sealed"),
            outside: dir.join("outside"),
        }
    }

    fn create(&self) {
        for d in [&self.root, &self.rw, &self.ro, &self.sealed, &self.outside] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(self.rw.join("a"), b"rw file").expect("write a");
        std::fs::write(self.outside.join("c"), b"outside").expect("write c");
        // A file nobody may read but its owner, owned by someone else, with a trusted.*
        // xattr: what an image layer's overlay metadata looks like to the passthrough.
        let b = self.ro.join("b");
        Layout::set_trusted_xattr(&b);
        std::os::unix::fs::chown(&b, Some(1234), Some(1234)).expect("chown b");
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o000)).expect("chmod b");
    }

    /// Writes a small file at `path` with `trusted.moat = y`.
    fn set_trusted_xattr(path: &Path) {
        std::fs::write(path, b"a file\n").expect("write");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: valid C strings and a valid value buffer for the call.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"trusted.moat".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    }
}

/// In the child: enters the jail as a VM with one read-only share would (`enter`, the
/// read-only share's capabilities, no_new_privs), then reports each check on stdout.
fn enter_child(dir: &Path) {
    let l = Layout::at(dir);
    let jail_config = JailConfig {
        root: l.root.clone(),
        seccomp: false,
        mount_namespace: true,
    };
    let ro = |path: &PathBuf| Keep {
        path: path.clone(),
        read_only: true,
    };
    let keep = [Keep::writable(l.rw.clone()), ro(&l.ro), ro(&l.sealed)];
    let kept_caps = caps::for_shares([true]);
    jail::mounts::enter(&jail_config, &keep).expect("enter the jail");
    caps::drop_all_but(&kept_caps).expect("drop capabilities");
    caps::set_no_new_privs().expect("no_new_privs");

    let mut failed = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        println!("{} {what}: {detail}", if ok { "ok" } else { "FAIL" });
        if !ok {
            failed.push(what.to_owned());
        }
    };
    let errno = |r: std::io::Result<Vec<u8>>| match r {
        Ok(_) => None,
        Err(e) => e.raw_os_error(),
    };

    let outside = errno(std::fs::read(l.outside.join("c")));
    check(
        "outside file gone",
        outside == Some(libc::ENOENT),
        format!("{outside:?}"),
    );
    let passwd = errno(std::fs::read("/etc/passwd"));
    check(
        "host /etc gone",
        passwd == Some(libc::ENOENT),
        format!("{passwd:?}"),
    );
    let proc1 = std::fs::metadata("/proc/1").is_ok();
    check(
        "no other process in /proc",
        !proc1,
        format!("/proc/1 exists: {proc1}"),
    );
    let listing: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    check(
        "only kept entries in their parent",
        listing == ["kept"],
        format!("{listing:?}"),
    );
    let cwd = std::env::current_dir().ok();
    check(
        "cwd is /",
        cwd.as_deref() == Some(Path::new("/")),
        format!("{cwd:?}"),
    );

    let a = std::fs::read(l.rw.join("a")).ok();
    check(
        "kept rw file readable",
        a.as_deref() == Some(b"rw file"),
        format!("{a:?}"),
    );
    let w = std::fs::write(l.rw.join("new"), b"n").err();
    check("kept rw dir writable", w.is_none(), format!("{w:?}"));
    let chown = std::os::unix::fs::chown(l.rw.join("new"), Some(1234), None)
        .err()
        .and_then(|e| e.raw_os_error());
    check(
        "chown refused (CAP_CHOWN dropped)",
        chown == Some(libc::EPERM),
        format!("{chown:?}"),
    );
    let b = std::fs::File::open(l.ro.join("b"));
    check(
        "mode-000 file of another user readable (CAP_DAC_OVERRIDE)",
        b.is_ok(),
        format!("{:?}", b.as_ref().err()),
    );
    for (what, path) in [
        ("kept ro dir read-only", &l.ro),
        ("ro dir inside a rw one read-only", &l.sealed),
        ("the jail seen inside a kept dir read-only", &l.root),
    ] {
        let w = errno(std::fs::write(path.join("new"), b"n").map(|()| Vec::new()));
        check(what, w == Some(libc::EROFS), format!("{w:?}"));
    }
    if let Ok(file) = &b {
        // The passthrough's way to an xattr: a /proc/self/fd path.
        use std::os::fd::AsRawFd;
        let p =
            std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("path");
        let mut v = [0u8; 4];
        // SAFETY: valid C strings and a buffer of the given size.
        let n = unsafe {
            libc::getxattr(
                p.as_ptr(),
                c"trusted.moat".as_ptr(),
                v.as_mut_ptr().cast(),
                v.len(),
            )
        };
        let why = if n < 0 {
            std::io::Error::last_os_error().to_string()
        } else {
            format!("{n} byte(s)")
        };
        check(
            "trusted.* xattr through /proc/self/fd (CAP_SYS_ADMIN)",
            n == 1 && v[0] == b'y',
            why,
        );
    }
    let w = errno(std::fs::write("/stray", b"x").map(|()| Vec::new()));
    check(
        "jail root read-only",
        w == Some(libc::EROFS),
        format!("{w:?}"),
    );

    let want = caps::mask(&kept_caps);
    let state = caps::current().expect("capget");
    check(
        "only the kept capabilities",
        state.effective == want
            && state.permitted == want
            && state.inheritable == 0
            && state.bounding == want,
        format!("{state:x?}, want {want:#x}"),
    );
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    check("no_new_privs", nnp == 1, format!("{nnp}"));
    // /proc/self/status is the VMM's own (kept); it shows the capabilities of the main
    // thread, which is this one in the VMM but not in a test harness.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| v.trim().to_owned());
    // SAFETY: getpid and gettid have no preconditions.
    let main_thread = unsafe { libc::getpid() == libc::gettid() };
    let expected = format!("{want:016x}");
    check(
        "/proc/self/status readable (CapEff of the main thread)",
        cap_eff.is_some() && (!main_thread || cap_eff.as_deref() == Some(expected.as_str())),
        format!("{cap_eff:?} (main thread: {main_thread}, want {expected})"),
    );
    std::io::stdout().flush().expect("flush");
    std::process::exit(if failed.is_empty() { 0 } else { 1 });
}

#[test]
fn enter_keeps_only_the_kept_paths_and_capabilities() {
    const TEST: &str = "enter_keeps_only_the_kept_paths_and_capabilities";
    if child_case().is_some() {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("MOAT_JAIL_DIR"));
        enter_child(&dir);
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED the jail test: entering a jail needs root (CAP_SYS_ADMIN)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::at(dir.path());
    layout.create();
    let out = run_child(TEST, "enter", dir.path(), Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the jailed child failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("the jailed child's checks:\n{stdout}");
    assert!(stdout.contains("ok only the kept capabilities"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(&layout.root)
        .expect("jail root")
        .collect();
    assert!(
        left.is_empty(),
        "the jail root is left empty on the host: {left:?}"
    );
}

#[test]
fn mounts_the_host_makes_later_under_a_kept_dir_show_in_the_jail() {
    const TEST: &str = "mounts_the_host_makes_later_under_a_kept_dir_show_in_the_jail";
    if let Some(case) = child_case() {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("MOAT_JAIL_DIR"));
        match case.as_str() {
            "host" => propagation::host(&dir, TEST, CHILD, "vmm"),
            _ => propagation::vmm(&dir),
        }
    }
    if !is_root() {
        eprintln!("SKIPPED the mount propagation test: mount namespaces need root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_child(TEST, "host", dir.path(), Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("late mount seen: true"),
        "a mount made after confinement is missing in the jail ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
}

// ----- virtio-fs, confined -----

#[test]
fn virtio_fs_works_confined_with_its_capabilities_and_filter() {
    const TEST: &str = "virtio_fs_works_confined_with_its_capabilities_and_filter";
    if child_case().is_some() {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("MOAT_JAIL_DIR"));
        fuse::confined_child(&dir);
    }
    if !is_root() {
        eprintln!("SKIPPED the confined virtio-fs test: entering a jail needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).expect("mkdir share");
    // The guest user creates its directories at the top of the share.
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::create_dir_all(dir.path().join("root")).expect("mkdir root");
    Layout::set_trusted_xattr(&share.join("hello"));

    let out = run_child(TEST, "fs", dir.path(), Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("the confined guest's requests:\n{stdout}");
    assert!(
        out.status.success(),
        "the confined virtio-fs child failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    // What the guest did is on the host, with the owners it asked for.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let d = share.join("d");
    assert_eq!(std::fs::metadata(&d).expect("d").uid(), fuse::GUEST_UID);
    let f = std::fs::metadata(d.join("f")).expect("d/f");
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (2000, 2000, 0o600));
    assert_eq!(
        (f.len(), f.nlink()),
        (8192, 2),
        "fallocated, hard-linked as d/h"
    );
    assert_eq!(f.mtime(), 1_000_000_000, "times set");
    assert_eq!(&std::fs::read(d.join("h")).expect("d/h")[..4], b"data");
    assert_eq!(
        std::fs::read_link(d.join("l")).expect("d/l"),
        Path::new("f")
    );
    let w = std::fs::symlink_metadata(d.join("w")).expect("d/w");
    assert!(
        w.file_type().is_char_device() && w.rdev() == 0,
        "a whiteout"
    );
    assert!(!share.join("e").exists(), "e removed");
    assert_eq!(
        std::fs::read_dir(dir.path().join("root"))
            .expect("root")
            .count(),
        0
    );
}

// ----- a whole VM, confined -----

/// The VM the jailed child runs: the smoke payload answering vsock port 1024, its console
/// log outside the jail (opened before), its hybrid socket in a directory of its own.
fn jailed_vm_config(dir: &Path) -> VmmConfig {
    VmmConfig {
        id: "jailed".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: dir.join("smoke.elf"),
        initramfs: None,
        cmdline: "console=ttyS0 smoke=vsock".into(),
        console_log: dir.join("logs/console.log"),
        console_log_max_bytes: moat_vmm::config::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        api_socket: Some(dir.join("sock/api.sock")),
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("sock/vsock"),
        }),
        fs: vec![],
        net: None,
        jail: Some(JailConfig {
            root: dir.join("root"),
            seccomp: std::env::var("MOAT_JAIL_SECCOMP").map_or(true, |v| v != "0"),
            mount_namespace: true,
        }),
    }
}

#[test]
fn a_confined_vm_runs_and_answers_over_vsock() {
    const TEST: &str = "a_confined_vm_runs_and_answers_over_vsock";
    if child_case().is_some() {
        in_single_threaded_copy();
        let dir = PathBuf::from(std::env::var_os(DIR).expect("MOAT_JAIL_DIR"));
        let exit = moat_vmm::run(&jailed_vm_config(&dir)).expect("the confined VM ran");
        println!("exit: {exit:?}");
        // Still confined: under the filter, and the console log's directory (not kept)
        // out of sight.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        println!("filtered: {}", status.contains("Seccomp:\t2"));
        println!("logs visible: {}", dir.join("logs").exists());
        std::io::stdout().flush().expect("flush");
        std::process::exit(i32::from(exit.code()));
    }
    if !is_root() || !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED the confined VM test: it needs root and /dev/kvm");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["logs", "sock", "root"] {
        std::fs::create_dir(dir.path().join(d)).expect("mkdir");
    }
    let elf = payload::build_elf(dir.path()).expect("build the guest payload");
    let config = jailed_vm_config(dir.path());
    assert_eq!(config.kernel, elf);
    let uds = config.vsock.as_ref().expect("vsock").uds_path.clone();

    let exe = std::env::current_exe().expect("this test binary");
    let mut child = Command::new(exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "vm")
        .env(DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");

    let deadline = Instant::now() + Duration::from_secs(30);
    let host = loop {
        if let Ok(s) = UnixStream::connect(&uds) {
            break s;
        }
        if Instant::now() > deadline || child.try_wait().expect("status").is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the VM never listened on {}:\n{}",
                uds.display(),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    host.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    (&host).write_all(b"CONNECT 1024\n").expect("CONNECT");
    let mut reader = BufReader::new(host.try_clone().expect("clone"));
    let mut ok = String::new();
    let replied = reader.read_line(&mut ok);
    // The guest now waits for data: the control socket (bound inside the jail, served by
    // threads under the filter) answers meanwhile.
    let api_path = config.api_socket.as_ref().expect("api socket");
    let status = UnixStream::connect(api_path).and_then(|api| {
        (&api).write_all(b"{\"op\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(api).read_line(&mut line)?;
        Ok(line)
    });
    let mut pong = [0u8; 10];
    let echoed = replied
        .and_then(|_| (&host).write_all(b"ping"))
        .and_then(|()| reader.read_exact(&mut pong));

    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("status").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        ok.starts_with("OK "),
        "CONNECT reply {ok:?}:\n{stdout}\n{stderr}"
    );
    echoed.expect("the guest's reply");
    let status = status.expect("a status reply from the control socket");
    assert!(status.contains(r#""state":"running""#), "{status}");
    assert_eq!(&pong, b"pong: ping");
    assert!(
        out.status.success() && stdout.contains(&format!("exit: {:?}", Exit::GuestShutdown)),
        "the confined VM ended badly ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("filtered: true"), "{stdout}");
    assert!(stdout.contains("logs visible: false"), "{stdout}");
    let log = std::fs::read_to_string(dir.path().join("logs/console.log")).expect("console");
    assert!(log.contains("moat-smoke: vsock got: ping\n"), "{log}");
    assert!(
        !uds.exists(),
        "the hybrid socket is removed at the end, inside the jail"
    );
    let left = std::fs::read_dir(dir.path().join("root"))
        .expect("root")
        .count();
    assert_eq!(left, 0, "the jail root is left empty on the host");
}
