//! The container's device cgroup: which device nodes its processes may create (mknod),
//! read and write. Without it guest root in any container could `mknod` the console, /dev/mem
//! or the pod's disks and open them.
//!
//! Like runc on cgroup v2: the rules are the spec's `linux.resources.devices` followed by
//! runc's default devices (`DEFAULTS`: mknod of any node, /dev/null, zero, full, random,
//! urandom, tty, ptmx and the ptys), so a spec that starts with "deny everything", as
//! containerd's and moatd's do, leaves exactly the defaults. The last rule that matches a
//! device decides, for each access (m, r, w) on its own; a device no rule matches is denied,
//! so a spec without rules gets the defaults alone. A list that allows everything (a
//! privileged container's `a *:* rwm`) needs no program at all.
//!
//! The rules are enforced by a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's cgroup (cgroup v2 has no `devices.allow` file): the kernel runs it on every
//! mknod and open of a device node by a process of the cgroup and refuses the call with
//! EPERM when it returns 0. A kernel that cannot load or attach it fails the container's
//! creation, with a message naming what the kernel lacks; one without the bpf() system call
//! at all (the built-in VMM's optional minimal kernel) runs the container without it and
//! the agent logs a warning.
//!
//! # Why the program is assembled by hand
//!
//! No well-kept crate assembles BPF at run time without an LLVM toolchain: aya and libbpf-rs
//! load objects compiled ahead of time (and a compiled object cannot hold per-container
//! rules without maps and their own loader), `bpf-script` is a small experiment, and
//! rbpf's assembler comes with a user-space VM and JIT the agent has no use for. (runc
//! builds its program with cilium/ebpf's `asm` package, which is Go.) The program is
//! straight-line code, at most four instructions per rule and fourteen around them, so it
//! is built here from the instruction encoding (`Insn`).
//!
//! # Layout
//!
//! `rules` checks the spec's rules, appends the defaults and reduces them to a `Filter`;
//! `program` compiles a filter to eBPF; `bpf` loads, attaches, lists and detaches programs
//! with the bpf() system call; `apply`, here, puts them together for one cgroup.

mod bpf;
mod program;
mod rules;
#[cfg(test)]
mod testing;

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use oci_spec::runtime::LinuxResources;

use self::bpf::{attach, attached, detach, failed, load};
use self::rules::{Filter, rules};
use super::error::{Error, Result};

/// Enforces the device rules of `resources` (see the module's doc) on the cgroup `dir`,
/// replacing the device programs attached there before. Call it before a process of the
/// container joins the cgroup.
pub(super) fn apply(dir: &Path, resources: Option<&LinuxResources>) -> Result<()> {
    let filter = Filter::new(&rules(resources)?);
    let cgroup = File::open(dir).map_err(|e| Error::Cgroup {
        path: dir.display().to_string(),
        source: e,
    })?;
    let Some(filter) = filter else {
        // Everything is allowed: drop what an earlier container left here. Where the
        // kernel cannot say (no bpf(), no cgroup BPF) nothing can be attached either.
        for id in attached(&cgroup).unwrap_or_default() {
            detach(&cgroup, id)
                .map_err(|e| failed(dir, "detach an old device filter (BPF_PROG_DETACH)", e, ""))?;
        }
        return Ok(());
    };
    let old = match attached(&cgroup) {
        Ok(ids) => ids,
        Err(Errno::ENOSYS) => {
            // A guest kernel built without bpf() (the optional minimal kernel of the
            // built-in VMM): nothing the workload can cause, and no program can be loaded.
            // Refusing every container there would take the backend down for a rule
            // between containers of one pod, which the kernel never had; say so instead.
            tracing::warn!(
                cgroup = %dir.display(),
                "no device cgroup: the guest kernel has no bpf() system call; build it with \
                 CONFIG_BPF_SYSCALL=y and CONFIG_CGROUP_BPF=y"
            );
            return Ok(());
        }
        Err(e) => {
            return Err(failed(
                dir,
                "list the device filters (BPF_PROG_QUERY)",
                e,
                "",
            ));
        }
    };
    let prog = load(dir, &filter.program())?;
    attach(&cgroup, &prog).map_err(|e| {
        failed(
            dir,
            "attach the device filter (BPF_PROG_ATTACH, BPF_CGROUP_DEVICE)",
            e,
            "",
        )
    })?;
    // The new program is in place before the old ones go: no moment without one.
    for id in old {
        detach(&cgroup, id)
            .map_err(|e| failed(dir, "detach an old device filter (BPF_PROG_DETACH)", e, ""))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::PathBuf;

    use oci_spec::runtime::LinuxDeviceType;

    use super::testing::{allow_all, cgroup_rule, deny_all, resources};
    use super::*;

    fn skip(test: &str, why: &str) {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    }

    /// A writable cgroup v2 mount: the first cgroup2 in /proc/self/mountinfo (on a hybrid
    /// host /sys/fs/cgroup/unified).
    fn cgroup2_root() -> Option<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
    }

    /// An open (or mknod) of one node, by a process in the cgroup, and whether it must
    /// succeed (else fail with EPERM).
    struct Try {
        what: &'static str,
        path: CString,
        flags: libc::c_int,
        mknod: Option<libc::dev_t>,
        ok: bool,
    }

    /// Forks a child that joins the cgroup (`procs`) and makes the `tries`; the first that
    /// goes otherwise, if any.
    fn in_cgroup(procs: &CString, tries: &[Try]) -> Option<&'static str> {
        // SAFETY: the child makes only async-signal-safe calls (open, write, close, mknod,
        // _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: as above; every pointer is a live C string.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(100);
                }
                libc::close(fd);
                for (n, t) in tries.iter().enumerate() {
                    let r = match t.mknod {
                        Some(dev) => libc::mknod(t.path.as_ptr(), libc::S_IFCHR | 0o600, dev),
                        None => libc::open(t.path.as_ptr(), t.flags | libc::O_NOCTTY),
                    };
                    let errno = *libc::__errno_location();
                    if r >= 0 && t.mknod.is_none() {
                        libc::close(r);
                    }
                    if (r >= 0) != t.ok || (r < 0 && errno != libc::EPERM) {
                        libc::_exit(1 + n as libc::c_int);
                    }
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid");
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        match libc::WEXITSTATUS(status) {
            0 => None,
            100 => Some("joining the cgroup"),
            n => Some(tries[n as usize - 1].what),
        }
    }

    #[test]
    fn the_kernel_enforces_the_filter() {
        const TEST: &str = "the_kernel_enforces_the_filter";
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return skip(TEST, "needs root");
        }
        let Some(root) = cgroup2_root() else {
            return skip(TEST, "no cgroup v2 mount in /proc/self/mountinfo");
        };
        let dir = root.join(format!("moat-devices-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            return skip(
                TEST,
                &format!("cannot create a cgroup in {}: {e}", root.display()),
            );
        }
        let result = std::panic::catch_unwind(|| kernel_checks(&dir));
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        match result {
            Ok(Some(why)) => skip(TEST, &why),
            Ok(None) => {}
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// The checks of `the_kernel_enforces_the_filter` in the cgroup `dir`; why they cannot
    /// run, if they cannot.
    fn kernel_checks(dir: &Path) -> Option<String> {
        let nodes = tempfile::tempdir().expect("tempdir");
        let node = |name: &str, kind: libc::mode_t, major: u32, minor: u32| {
            let p = nodes.path().join(name);
            let c = CString::new(p.as_os_str().as_bytes()).expect("path");
            // SAFETY: a live C string.
            let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
            assert_eq!(r, 0, "mknod {}: {}", p.display(), Errno::last());
            c
        };
        let null = node("null", libc::S_IFCHR, 1, 3);
        let zero = node("zero", libc::S_IFCHR, 1, 5);
        let console = node("console", libc::S_IFCHR, 5, 1);
        let kmsg = node("kmsg", libc::S_IFCHR, 1, 11);
        let disk = node("disk", libc::S_IFBLK, 7, 0);
        let made = CString::new(nodes.path().join("made").as_os_str().as_bytes()).expect("path");
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
        let t = |what, path: &CString, flags, ok| Try {
            what,
            path: path.clone(),
            flags,
            mknod: None,
            ok,
        };
        let count = |dir: &Path| {
            attached(&File::open(dir).expect("cgroup"))
                .expect("query")
                .len()
        };

        // An unprivileged container's rules: runc's defaults only.
        match apply(dir, Some(&resources(vec![deny_all()]))) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("CONFIG_") => {
                return Some(format!(
                    "this kernel cannot run cgroup device programs: {e}"
                ));
            }
            Err(e) => panic!("apply: {e}"),
        }
        assert_eq!(count(dir), 1);
        let tries = [
            t("read and write /dev/null (1:3)", &null, libc::O_RDWR, true),
            t("read /dev/zero (1:5)", &zero, libc::O_RDONLY, true),
            t("read the console (5:1)", &console, libc::O_RDONLY, false),
            t("write the console (5:1)", &console, libc::O_WRONLY, false),
            t("read kmsg (1:11)", &kmsg, libc::O_RDONLY, false),
            t("read a loop disk (b 7:0)", &disk, libc::O_RDONLY, false),
            Try {
                what: "mknod c 1:1 (mknod is allowed for every node)",
                path: made.clone(),
                flags: 0,
                mknod: Some(libc::makedev(1, 1)),
                ok: true,
            },
            t(
                "read the new /dev/mem node (1:1)",
                &made,
                libc::O_RDONLY,
                false,
            ),
        ];
        assert_eq!(in_cgroup(&procs, &tries), None, "deny-all and the defaults");

        // Read-only access to kmsg, by rule.
        let kmsg_r = cgroup_rule(true, Some(LinuxDeviceType::C), Some(1), Some(11), "r");
        apply(dir, Some(&resources(vec![deny_all(), kmsg_r]))).expect("apply");
        assert_eq!(count(dir), 1, "the new program replaced the old one");
        let tries = [
            t("read kmsg (1:11), allowed", &kmsg, libc::O_RDONLY, true),
            t("write kmsg (1:11), denied", &kmsg, libc::O_WRONLY, false),
            t("read /dev/null (1:3)", &null, libc::O_RDONLY, true),
            t("read the console (5:1)", &console, libc::O_RDONLY, false),
        ];
        assert_eq!(in_cgroup(&procs, &tries), None, "kmsg readable");

        // Privileged: no program, and the old one gone.
        apply(dir, Some(&resources(vec![allow_all()]))).expect("apply");
        assert_eq!(count(dir), 0);
        let tries = [t("read kmsg (1:11)", &kmsg, libc::O_RDONLY, true)];
        assert_eq!(in_cgroup(&procs, &tries), None, "privileged");
        None
    }
}
