//! Tests that run containers for real: they need root (and say so, on stderr, when they
//! skip), Debian's static busybox (`/bin/busybox`, or `$MOAT_TEST_BUSYBOX`) for the rootfs,
//! and for the cgroup ones a writable cgroup v2 (at /sys/fs/cgroup; the placement test
//! also takes /sys/fs/cgroup/unified on a hybrid host).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, Process, Spec, UserBuilder,
};

use super::*;

/// Says why a test does not run, where `cargo test` shows it even when it captures output.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        skip(test, &format!("needs root (euid is {euid})"));
    }
    euid == 0
}

fn busybox() -> Option<PathBuf> {
    let p = std::env::var_os("MOAT_TEST_BUSYBOX")
        .map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    p.exists().then_some(p)
}

/// A busybox rootfs in a tempdir: /bin/busybox with its applet links, /etc/passwd and
/// /etc/group, and a few directories.
fn rootfs(test: &str) -> Option<tempfile::TempDir> {
    if !is_root(test) {
        return None;
    }
    let Some(bb) = busybox() else {
        skip(
            test,
            "no /bin/busybox (apt-get install busybox-static) and no $MOAT_TEST_BUSYBOX",
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for d in [
        "bin",
        "etc",
        "proc",
        "dev",
        "sys",
        "tmp",
        "data",
        "etc/secret",
        "home/app",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(&bb, root.join("bin/busybox")).expect("copy busybox");
    let list = std::process::Command::new(&bb)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nwheel:x:10:app\naudio:x:29:app\napp:x:1000:\n",
    )
    .expect("group");
    std::fs::write(root.join("etc/secret/key"), "hunter2").expect("secret");
    std::fs::write(root.join("etc/secret.txt"), "hunter2").expect("secret");
    Some(dir)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The spec the tests start from: the OCI default (proc, /dev tmpfs, devpts, shm, mqueue,
/// sysfs, cgroup; masked and read-only paths; AUDIT_WRITE, KILL, NET_BIND_SERVICE;
/// no_new_privs; read-only root) with the default namespaces of the executor (no network
/// namespace) and `args`.
fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("moat-test".into()));
    let mut linux = spec.linux().clone().expect("linux");
    linux.set_namespaces(None);
    linux.set_resources(None);
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    masked.extend(["/etc/secret".to_string(), "/etc/secret.txt".to_string()]);
    linux.set_masked_paths(Some(masked));
    spec.set_linux(Some(linux));
    let process = spec.process_mut().as_mut().expect("process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec
}

fn process_mut(spec: &mut Spec) -> &mut Process {
    spec.process_mut().as_mut().expect("process")
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut s);
    s
}

fn pipes(stdio: Option<Stdio>) -> (Option<OwnedFd>, OwnedFd, OwnedFd) {
    match stdio {
        Some(Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        }) => (stdin, stdout, stderr),
        other => panic!("expected pipes, got {other:?}"),
    }
}

/// Creates, starts and waits for a container; collects its output.
fn run(spec: &Spec, rootfs: &Path) -> Output {
    let c = Container::create(&id("run"), spec, rootfs).expect("create");
    let (_, stdout, stderr) = pipes(c.take_stdio());
    c.start().expect("start");
    let err = std::thread::spawn(move || read_all(stderr));
    let stdout = read_all(stdout);
    let stderr = err.join().expect("stderr thread");
    let status = c.wait_blocking().expect("wait");
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn echo_hello_through_the_pipes() {
    let Some(dir) = rootfs("echo_hello_through_the_pipes") else {
        return;
    };
    let out = run(&spec(&["echo", "hello"]), dir.path());
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(
        out.status,
        ExitStatus {
            code: 0,
            signal: None,
            oom_killed: false
        }
    );
}

#[test]
fn stdin_pipe_reaches_the_process() {
    let Some(dir) = rootfs("stdin_pipe_reaches_the_process") else {
        return;
    };
    let opts = Options {
        stdin: true,
        ..Options::default()
    };
    let c = Container::create_with(
        &id("stdin"),
        &spec(&["tr", "a-z", "A-Z"]),
        dir.path(),
        &opts,
    )
    .expect("create");
    let (stdin, stdout, _stderr) = pipes(c.take_stdio());
    c.start().expect("start");
    let mut stdin = std::fs::File::from(stdin.expect("stdin pipe"));
    stdin.write_all(b"shout\n").expect("write");
    drop(stdin);
    assert_eq!(read_all(stdout), "SHOUT\n");
    assert_eq!(c.wait_blocking().expect("wait").code, 0);
}

#[test]
fn exit_codes_and_kill() {
    let Some(dir) = rootfs("exit_codes_and_kill") else {
        return;
    };
    assert_eq!(run(&spec(&["true"]), dir.path()).status.code, 0);
    assert_eq!(
        run(&spec(&["sh", "-c", "exit 1"]), dir.path()).status.code,
        1
    );
    let c = Container::create(&id("kill"), &spec(&["sleep", "100"]), dir.path()).expect("create");
    assert_eq!(c.state(), State::Created);
    c.start().expect("start");
    assert_eq!(c.state(), State::Running);
    assert!(c.try_wait().expect("try_wait").is_none());
    c.signal(libc::SIGKILL).expect("kill");
    let st = c.wait_blocking().expect("wait");
    assert_eq!(
        (st.code, st.signal, st.oom_killed),
        (137, Some(libc::SIGKILL), false)
    );
    assert_eq!(c.state(), State::Stopped);
    assert!(c.start().is_err());
}

#[tokio::test]
async fn async_wait() {
    let Some(dir) = rootfs("async_wait") else {
        return;
    };
    let c = Container::create(
        &id("async"),
        &spec(&["sh", "-c", "sleep 0.2; exit 3"]),
        dir.path(),
    )
    .expect("create");
    c.start().expect("start");
    let (a, b) = tokio::join!(c.wait(), c.wait());
    assert_eq!(a.expect("wait").code, 3);
    assert_eq!(b.expect("wait").code, 3);
}

#[test]
fn user_groups_env_cwd_and_rlimits() {
    let Some(dir) = rootfs("user_groups_env_cwd_and_rlimits") else {
        return;
    };
    let who = resolve_user(dir.path(), "app").expect("resolve");
    assert_eq!(
        who,
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10, 29]
        }
    );
    let mut spec = spec(&["sh", "-c", "id -u; id -g; id -G; echo $FOO; pwd; ulimit -n"]);
    let p = process_mut(&mut spec);
    p.set_user(
        UserBuilder::default()
            .uid(who.uid)
            .gid(who.gid)
            .additional_gids(who.additional_gids.clone())
            .build()
            .expect("user"),
    );
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
    p.set_cwd("/home/app".into());
    p.set_rlimits(Some(vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(512u64)
            .hard(512u64)
            .build()
            .expect("rlimit"),
    ]));
    let out = run(&spec, dir.path());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1000");
    let groups: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(
        groups.contains(&"10") && groups.contains(&"29"),
        "groups {groups:?}"
    );
    assert!(
        !groups.contains(&"0"),
        "root's groups must be gone: {groups:?}"
    );
    assert_eq!(&lines[3..], &["bar", "/home/app", "512"]);
}

#[test]
fn hostname_and_own_pid_namespace() {
    let Some(dir) = rootfs("hostname_and_own_pid_namespace") else {
        return;
    };
    let out = run(
        &spec(&[
            "sh",
            "-c",
            "hostname; echo $$; cut -d' ' -f1 /proc/1/stat; ls /proc | grep -c '^[0-9]'",
        ]),
        dir.path(),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "moat-test", "stderr {:?}", out.stderr);
    assert_eq!(lines[1], "1", "the process is PID 1 of its own namespace");
    assert_eq!(lines[2], "1", "/proc is the container's");
    let procs: u32 = lines[3].parse().expect("count");
    assert!(
        procs <= 4,
        "only the container's processes are in /proc: {procs}"
    );
}

#[test]
fn masked_paths_read_empty_and_root_is_read_only() {
    let Some(dir) = rootfs("masked_paths_read_empty_and_root_is_read_only") else {
        return;
    };
    let out = run(
        &spec(&[
            "sh",
            "-c",
            "cat /etc/secret.txt; ls -A /etc/secret; echo end; touch /new; (echo > /proc/sys/kernel/hostname)",
        ]),
        dir.path(),
    );
    assert_eq!(
        out.stdout, "end\n",
        "masked files and directories read empty: {:?}",
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines[0].contains("/new: Read-only file system"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("Read-only file system"),
        "/proc/sys is read-only: {lines:?}"
    );
}

#[test]
fn bind_mounts_read_only_and_read_write() {
    let Some(dir) = rootfs("bind_mounts_read_only_and_read_write") else {
        return;
    };
    let host_ro = tempfile::tempdir().expect("tempdir");
    let host_rw = tempfile::tempdir().expect("tempdir");
    std::fs::write(host_ro.path().join("in"), "from the host\n").expect("write");
    let mut spec = spec(&[
        "sh",
        "-c",
        "cat /ro/in; echo x > /ro/out 2>&1; echo written > /rw/out",
    ]);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (dest, src, opts) in [
        ("/ro", host_ro.path(), vec!["rbind", "ro"]),
        ("/rw", host_rw.path(), vec!["bind"]),
    ] {
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(opts.into_iter().map(String::from).collect::<Vec<_>>())
                .build()
                .expect("mount"),
        );
    }
    spec.set_mounts(Some(mounts));
    let out = run(&spec, dir.path());
    assert!(
        out.stdout.starts_with("from the host\n"),
        "{:?} {:?}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("/ro/out: Read-only file system"),
        "{:?}",
        out.stderr
    );
    assert!(!host_ro.path().join("out").exists());
    assert_eq!(
        std::fs::read_to_string(host_rw.path().join("out")).expect("rw"),
        "written\n"
    );
    // Nothing leaked into the agent's mount namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(dir.path().to_str().expect("utf8")),
        "container mounts leaked"
    );
}

#[test]
fn dropped_capabilities_are_missing() {
    let Some(dir) = rootfs("dropped_capabilities_are_missing") else {
        return;
    };
    let out = run(
        &spec(&[
            "sh",
            "-c",
            "grep -E '^Cap(Eff|Bnd)' /proc/self/status; hostname other 2>&1; true",
        ]),
        dir.path(),
    );
    // The default set: KILL (5), NET_BIND_SERVICE (10), AUDIT_WRITE (29).
    assert!(
        out.stdout.contains("CapEff:\t0000000020000420"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapBnd:\t0000000020000420"),
        "{}",
        out.stdout
    );
    // Without CAP_SYS_ADMIN, root in the container cannot set the hostname.
    assert!(
        out.stdout.contains("Operation not permitted"),
        "{}",
        out.stdout
    );
}

/// Every capability this (test) process may hand on.
fn all_caps() -> oci_spec::runtime::LinuxCapabilities {
    let all: oci_spec::runtime::Capabilities = caps::read(None, caps::CapSet::Permitted)
        .expect("capget")
        .iter()
        .filter_map(|c| {
            c.to_string()
                .strip_prefix("CAP_")
                .and_then(|n| n.parse::<Capability>().ok())
        })
        .collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(all.clone())
        .effective(all.clone())
        .permitted(all.clone())
        .inheritable(all)
        .build()
        .expect("caps")
}

#[test]
fn seccomp_blocks_a_system_call() {
    let Some(dir) = rootfs("seccomp_blocks_a_system_call") else {
        return;
    };
    // With CAP_SYS_ADMIN swapoff gets as far as looking the file up...
    let mut spec = spec(&[
        "sh",
        "-c",
        "swapoff /no-such-swap 2>&1; grep Seccomp: /proc/self/status",
    ]);
    let caps = all_caps();
    process_mut(&mut spec).set_capabilities(Some(caps.clone()));
    let out = run(&spec, dir.path());
    assert!(
        out.stdout.contains("No such file or directory"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Seccomp:\t0"), "{}", out.stdout);
    // ...and RuntimeDefault stops it before.
    let bounding = caps.bounding().clone().expect("bounding");
    let mut linux = spec.linux().clone().expect("linux");
    linux.set_seccomp(Some(runtime_default_seccomp(&bounding).expect("profile")));
    spec.set_linux(Some(linux));
    let out = run(&spec, dir.path());
    assert!(
        out.stdout.contains("Operation not permitted"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("Seccomp:\t2"), "{}", out.stdout);
}

#[test]
fn runtime_default_runs_ordinary_programs() {
    let Some(dir) = rootfs("runtime_default_runs_ordinary_programs") else {
        return;
    };
    for nnp in [true, false] {
        let mut spec = spec(&[
            "sh",
            "-c",
            "echo ok | cat; ls / > /dev/null && echo listed; sleep 0.01 & wait; unshare -m true 2>&1; true",
        ]);
        let bounding = process_mut(&mut spec)
            .capabilities()
            .clone()
            .expect("caps")
            .bounding()
            .clone()
            .expect("bounding");
        process_mut(&mut spec).set_no_new_privileges(Some(nnp));
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_seccomp(Some(runtime_default_seccomp(&bounding).expect("profile")));
        spec.set_linux(Some(linux));
        let out = run(&spec, dir.path());
        assert_eq!(
            out.status.code, 0,
            "nnp {nnp}: {} {}",
            out.stdout, out.stderr
        );
        assert!(
            out.stdout.starts_with("ok\nlisted\n"),
            "nnp {nnp}: {} {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("Operation not permitted"),
            "unshare must fail: {}",
            out.stdout
        );
    }
}

#[test]
fn exec_joins_the_container() {
    let Some(dir) = rootfs("exec_joins_the_container") else {
        return;
    };
    let c = Container::create(&id("exec"), &spec(&["sleep", "100"]), dir.path()).expect("create");
    c.start().expect("start");
    let mut p = Process::default();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$; hostname".into(),
    ]));
    p.set_env(Some(vec!["PATH=/bin".into()]));
    let e = c.exec(&p, &Options::default()).expect("exec");
    let (_, stdout, stderr) = pipes(e.take_stdio());
    let out = read_all(stdout);
    let st = e.wait_blocking().expect("wait");
    assert_eq!(st.code, 0, "{out} {}", read_all(stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "sleep 100",
        "PID 1 is the container's init"
    );
    let pid: u32 = lines[1].parse().expect("pid");
    assert!(
        pid > 1 && pid < 100,
        "a pid of the container's namespace: {pid}"
    );
    assert_eq!(lines[2], "moat-test");
    // An exec that cannot exec says why.
    p.set_args(Some(vec!["/bin/nope".into()]));
    let err = c.exec(&p, &Options::default()).expect_err("nope");
    assert_eq!(err.to_string(), "exec /bin/nope: No such file or directory");
    c.signal(libc::SIGKILL).expect("kill");
    assert_eq!(c.wait_blocking().expect("wait").code, 137);
}

#[test]
fn exec_failures_reach_the_caller() {
    let Some(dir) = rootfs("exec_failures_reach_the_caller") else {
        return;
    };
    let c = Container::create(&id("nope"), &spec(&["/bin/nope"]), dir.path()).expect("create");
    let err = c.start().expect_err("no such file");
    assert_eq!(err.to_string(), "exec /bin/nope: No such file or directory");
    assert_eq!(c.wait_blocking().expect("wait").code, 127);
    let c = Container::create(&id("nope"), &spec(&["nope"]), dir.path()).expect("create");
    assert_eq!(
        c.start().expect_err("not found").to_string(),
        "exec nope: executable file not found in $PATH"
    );
    let mut s = spec(&["true"]);
    process_mut(&mut s).set_cwd("/etc/passwd".into());
    let err = Container::create(&id("cwd"), &s, dir.path()).expect_err("cwd");
    assert_eq!(err.to_string(), "chdir /etc/passwd: Not a directory");
}

/// Everything a container wrote to its terminal, until it closed it.
fn read_pty(master: std::os::fd::OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Reading the master ends with EIO once the last slave fd closes.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn terminal_gives_a_pty() {
    let Some(dir) = rootfs("terminal_gives_a_pty") else {
        return;
    };
    let mut spec = spec(&["sh", "-c", "tty; echo hi"]);
    process_mut(&mut spec).set_terminal(Some(true));
    let c = Container::create(&id("tty"), &spec, dir.path()).expect("create");
    let Some(Stdio::Pty { master }) = c.take_stdio() else {
        panic!("expected a pty")
    };
    c.start().expect("start");
    let out = read_pty(master);
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("hi"), "{out:?}");
    assert_eq!(c.wait_blocking().expect("wait").code, 0);
}

/// A cgroup v2 root whose subtree we may write: (root, whether it has the memory
/// controller).
fn cgroup_root(test: &str) -> Option<(PathBuf, bool)> {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = PathBuf::from(root);
        if !is_cgroup2(&root) {
            continue;
        }
        let probe = root.join(format!("moat-probe-{}", std::process::id()));
        if std::fs::create_dir(&probe).is_err() {
            continue;
        }
        let _ = std::fs::remove_dir(&probe);
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        return Some((root, controllers.split_whitespace().any(|c| c == "memory")));
    }
    skip(
        test,
        "no writable cgroup v2 at /sys/fs/cgroup or /sys/fs/cgroup/unified",
    );
    None
}

#[test]
fn cgroup_placement() {
    let Some(dir) = rootfs("cgroup_placement") else {
        return;
    };
    let Some((root, _)) = cgroup_root("cgroup_placement") else {
        return;
    };
    let name = id("moat-test");
    let mut spec = spec(&["sleep", "100"]);
    let mut linux = spec.linux().clone().expect("linux");
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{name}/ctr"))));
    spec.set_linux(Some(linux));
    let opts = Options {
        cgroup_root: root.clone(),
        ..Options::default()
    };
    let c = Container::create_with(&id("cg"), &spec, dir.path(), &opts).expect("create");
    c.start().expect("start");
    let want = format!("0::/{name}/ctr");
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid())).expect("cgroup");
    assert!(cg.lines().any(|l| l == want), "{cg}");
    let mut p = Process::default();
    p.set_args(Some(vec!["true".into()]));
    let e = c.exec(&p, &Options::default()).expect("exec");
    assert_eq!(e.wait_blocking().expect("wait").code, 0);
    let path = c.cgroup_path().expect("cgroup").to_path_buf();
    c.delete().expect("delete");
    assert!(!path.exists());
    let _ = std::fs::remove_dir(root.join(&name));
}

#[test]
fn oom_kill_is_reported() {
    let Some(dir) = rootfs("oom_kill_is_reported") else {
        return;
    };
    let Some((root, memory)) = cgroup_root("oom_kill_is_reported") else {
        return;
    };
    if !memory {
        skip(
            "oom_kill_is_reported",
            &format!(
                "the memory controller is not available in {}",
                root.display()
            ),
        );
        return;
    }
    let name = id("moat-test");
    let mut spec = spec(&["tail", "/dev/zero"]);
    let mut linux = spec.linux().clone().expect("linux");
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{name}/ctr"))));
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(8i64 << 20)
                    .swap(8i64 << 20)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources"),
    ));
    spec.set_linux(Some(linux));
    let opts = Options {
        cgroup_root: root.clone(),
        ..Options::default()
    };
    let c = Container::create_with(&id("oom"), &spec, dir.path(), &opts).expect("create");
    c.start().expect("start");
    let st = c.wait_blocking().expect("wait");
    assert_eq!(
        (st.code, st.signal, st.oom_killed),
        (137, Some(libc::SIGKILL), true)
    );
    c.delete().expect("delete");
    let _ = std::fs::remove_dir(root.join(&name));
}

#[test]
fn overlay_rootfs() {
    if !is_root("overlay_rootfs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    // upper and work on a tmpfs, as in the guest.
    let scratch = base.join("scratch");
    std::fs::create_dir(&scratch).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("tmpfs");
    let (l1, l2) = (base.join("l1"), base.join("l2"));
    std::fs::create_dir_all(&l1).expect("mkdir");
    std::fs::create_dir_all(&l2).expect("mkdir");
    std::fs::write(l1.join("a"), "bottom").expect("write");
    std::fs::write(l1.join("b"), "bottom").expect("write");
    std::fs::write(l2.join("b"), "top").expect("write");
    let merged = base.join("merged");
    let r = mount_overlay(
        &[l1.clone(), l2.clone()],
        &scratch.join("upper"),
        &scratch.join("work"),
        &merged,
    );
    let check = || -> std::result::Result<(), String> {
        r.as_ref().map_err(|e| e.to_string())?;
        let read = |p: &str| std::fs::read_to_string(merged.join(p)).unwrap_or_default();
        if (read("a").as_str(), read("b").as_str()) != ("bottom", "top") {
            return Err(format!("merged view: a={} b={}", read("a"), read("b")));
        }
        std::fs::write(merged.join("c"), "new").map_err(|e| e.to_string())?;
        if !scratch.join("upper/c").exists() || l2.join("c").exists() {
            return Err("writes must land in the upper dir".into());
        }
        Ok(())
    };
    let result = check();
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&scratch, nix::mount::MntFlags::MNT_DETACH);
    result.expect("overlay");
}

#[test]
fn mounts_refuse_symlinks_planted_in_a_shared_volume() {
    let Some(dir) = rootfs("mounts_refuse_symlinks_planted_in_a_shared_volume") else {
        return;
    };
    // A volume another container could write, with a symlink out of the rootfs in it.
    let volume = tempfile::tempdir().expect("tempdir");
    let victim = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(victim.path(), volume.path().join("sub")).expect("symlink");
    let mut spec = spec(&["true"]);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (dest, src) in [("/vol", volume.path()), ("/vol/sub/escape", dir.path())] {
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string()])
                .build()
                .expect("mount"),
        );
    }
    spec.set_mounts(Some(mounts));
    let err = Container::create(&id("symlink"), &spec, dir.path()).expect_err("must refuse");
    assert_eq!(
        err.to_string(),
        "create the mount point /vol/sub/escape: Too many symbolic links encountered"
    );
    assert!(!victim.path().join("escape").exists());
}

/// The pod's mappings in these tests: container ids 0..65535 are 100000... outside.
const MAPPED_ROOT: u32 = 100_000;

fn pod_mappings() -> userns::IdMappings {
    userns::tests::pod(MAPPED_ROOT)
}

/// `rootfs(test)` owned by the mapped root, as moatd shifts the image's layers for a pod
/// with a user namespace.
fn userns_rootfs(test: &str) -> Option<tempfile::TempDir> {
    let dir = rootfs(test)?;
    fn shift(p: &Path) {
        let meta = std::fs::symlink_metadata(p).expect("stat");
        std::os::unix::fs::lchown(p, Some(MAPPED_ROOT), Some(MAPPED_ROOT)).expect("chown");
        if meta.is_dir() {
            for e in std::fs::read_dir(p).expect("readdir") {
                shift(&e.expect("entry").path());
            }
        }
    }
    shift(dir.path());
    Some(dir)
}

/// A pod init in a user namespace with the pod's mappings (a plain `sleep`).
fn pod_init() -> PodInit {
    PodInit::spawn(
        Path::new("/bin/sleep"),
        &[PAUSE_ARG0, "1000"],
        Some(&pod_mappings()),
    )
    .expect("pod init")
}

/// `spec(args)` joining the user namespace of `init`, with the pod's mappings, with new
/// mount, IPC and UTS namespaces, and the PID namespace `pid` (None: one of its own).
fn userns_spec(args: &[&str], init: &PodInit, pid: Option<PathBuf>) -> Spec {
    use oci_spec::runtime::{LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType};
    let mut spec = spec(args);
    let mut linux = spec.linux().clone().expect("linux");
    let ns = |t: LinuxNamespaceType, path: Option<PathBuf>| {
        let b = LinuxNamespaceBuilder::default().typ(t);
        match path {
            Some(p) => b.path(p),
            None => b,
        }
        .build()
        .expect("namespace")
    };
    linux.set_namespaces(Some(vec![
        ns(LinuxNamespaceType::User, Some(init.user_namespace())),
        ns(LinuxNamespaceType::Pid, pid),
        ns(LinuxNamespaceType::Mount, None),
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
    ]));
    let m = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(MAPPED_ROOT)
        .size(65536u32)
        .build()
        .expect("mapping");
    linux.set_uid_mappings(Some(vec![m]));
    linux.set_gid_mappings(Some(vec![m]));
    spec.set_linux(Some(linux));
    spec
}

/// The inode of the user namespace that owns the namespace at `path` (NS_GET_USERNS).
fn owner_userns(path: &Path) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let f = std::fs::File::open(path).expect("open namespace");
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd, which we then own.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS as _) };
    assert!(
        fd >= 0,
        "NS_GET_USERNS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just gave us this fd.
    let owner = unsafe { std::fs::File::from_raw_fd(fd) };
    owner.metadata().expect("fstat").ino()
}

fn ns_ino(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat namespace").ino()
}

#[test]
fn a_user_namespace_container_is_root_inside_and_its_files_are_mapped() {
    let test = "a_user_namespace_container_is_root_inside_and_its_files_are_mapped";
    let Some(dir) = userns_rootfs(test) else {
        return;
    };
    let init = pod_init();
    // A volume anyone may write, owned by the VM's root.
    let rw = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        rw.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let mut spec = userns_spec(
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; id -u; id -g; echo hi > /rw/file && echo written; \
             echo $$; test -r /proc/1/status && echo proc; ls /sys/kernel > /dev/null && echo sys; \
             touch /sys/x 2>&1; grep -c ' /sys sysfs ro,' /proc/self/mounts; stat -c %u /; \
             ls -l /dev/null; echo > /dev/null && echo null; ulimit -Hn; \
             cat /proc/self/oom_score_adj",
        ],
        &init,
        None,
    );
    // Above the agent's hard limit, and a lower score: only the VM's root may, so they are
    // set before the user namespace is entered. (Where this test runs without
    // CAP_SYS_RESOURCE, a lower limit and a higher score, which need nothing.)
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let resource = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    let (hard, adj) = if resource {
        (lim.rlim_max + 1000, -500)
    } else {
        skip(
            test,
            "(in part) no CAP_SYS_RESOURCE to raise a hard limit or lower oom_score_adj",
        );
        (lim.rlim_max - 1, 500)
    };
    let p = process_mut(&mut spec);
    p.set_rlimits(Some(vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1024u64)
            .hard(hard)
            .build()
            .expect("rlimit"),
    ]));
    p.set_oom_score_adj(Some(adj));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/rw")
            .typ("bind")
            .source(rw.path())
            .options(vec!["rbind".to_string()])
            .build()
            .expect("mount"),
    );
    spec.set_mounts(Some(mounts));
    let c = Container::create(&id("userns"), &spec, dir.path()).expect("create");
    // Its own PID namespace, which the pod's user namespace owns.
    let own_pid_ns = PathBuf::from(format!("/proc/{}/ns/pid", c.pid()));
    assert_eq!(owner_userns(&own_pid_ns), ns_ino(&init.user_namespace()));
    assert_ne!(ns_ino(&own_pid_ns), ns_ino(&init.namespace()));
    let (_, stdout, stderr) = pipes(c.take_stdio());
    c.start().expect("start");
    let err = std::thread::spawn(move || read_all(stderr));
    let out = read_all(stdout);
    let err = err.join().expect("stderr");
    let st = c.wait_blocking().expect("wait");
    assert_eq!(st.code, 0, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "{out}"
    );
    assert_eq!(
        &lines[1..6],
        ["0", "0", "written", "1", "proc"],
        "{out} {err}"
    );
    assert_eq!(lines[6], "sys", "/sys is the VM's, bound: {out}");
    assert!(lines[7].contains("Read-only file system"), "{out}");
    assert_eq!(lines[8], "1", "/sys is read-only: {out}");
    assert_eq!(lines[9], "0", "the container's root owns /: {out}");
    assert!(lines[10].starts_with("crw-rw-rw-"), "{out}");
    assert_eq!(lines[11], "null", "the bound /dev/null works: {out}");
    assert_eq!(lines[12], hard.to_string(), "{out}");
    assert_eq!(lines[13], adj.to_string(), "{out}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(rw.path().join("file")).expect("the file");
    assert_eq!((meta.uid(), meta.gid()), (MAPPED_ROOT, MAPPED_ROOT));
    // Nothing leaked into the agent's mount namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(dir.path().to_str().expect("utf8")));
}

#[test]
fn containers_and_their_execs_join_the_pod_user_namespace() {
    let test = "containers_and_their_execs_join_the_pod_user_namespace";
    let Some(dir) = userns_rootfs(test) else {
        return;
    };
    let init = pod_init();
    let pod_user = std::fs::read_link(init.user_namespace()).expect("pod userns");
    assert_ne!(
        pod_user,
        std::fs::read_link("/proc/self/ns/user").expect("own userns")
    );
    // One in the pod's PID namespace, one with its own, under RuntimeDefault with and
    // without no_new_privs.
    let mut containers = Vec::new();
    for (pid, nnp) in [(Some(init.namespace()), true), (None, false)] {
        let mut spec = userns_spec(&["sleep", "100"], &init, pid);
        let bounding = process_mut(&mut spec)
            .capabilities()
            .clone()
            .expect("caps")
            .bounding()
            .clone()
            .expect("bounding");
        process_mut(&mut spec).set_no_new_privileges(Some(nnp));
        let mut linux = spec.linux().clone().expect("linux");
        linux.set_seccomp(Some(runtime_default_seccomp(&bounding).expect("profile")));
        spec.set_linux(Some(linux));
        let c = Container::create(&id("join"), &spec, dir.path()).expect("create");
        c.start().expect("start");
        containers.push(c);
    }
    let ns = |pid: i32, name: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{name}")).expect("namespace")
    };
    assert_eq!(ns(containers[0].pid(), "user"), pod_user);
    assert_eq!(ns(containers[1].pid(), "user"), pod_user);
    assert_eq!(ns(containers[0].pid(), "pid"), ns(init.pid(), "pid"));
    assert_ne!(ns(containers[1].pid(), "pid"), ns(init.pid(), "pid"));
    let mut seen = Vec::new();
    for c in &containers {
        let mut p = Process::default();
        p.set_args(Some(vec![
            "sh".into(),
            "-c".into(),
            "readlink /proc/self/ns/user; id -u; cat /proc/self/uid_map; unshare -U true 2>&1; \
             echo end"
                .into(),
        ]));
        p.set_env(Some(vec!["PATH=/bin".into()]));
        let e = c.exec(&p, &Options::default()).expect("exec");
        let (_, stdout, stderr) = pipes(e.take_stdio());
        let out = read_all(stdout);
        let st = e.wait_blocking().expect("wait");
        assert_eq!(st.code, 0, "{out} {}", read_all(stderr));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(Path::new(lines[0]), pod_user, "{out}");
        assert_eq!(lines[1], "0", "{out}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["0", "100000", "65536"]
        );
        // RuntimeDefault still keeps it from making user namespaces of its own.
        assert!(lines[3].contains("Operation not permitted"), "{out}");
        seen.push(lines[0].to_string());
    }
    assert_eq!(seen[0], seen[1], "the same /proc/self/ns/user inode");
    // A spec whose mappings are not the namespace's is refused.
    let mut spec = userns_spec(&["true"], &init, None);
    let mut linux = spec.linux().clone().expect("linux");
    let other = oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(200_000u32)
        .size(65536u32)
        .build()
        .expect("mapping");
    linux.set_uid_mappings(Some(vec![other]));
    spec.set_linux(Some(linux));
    let err = Container::create(&id("other"), &spec, dir.path()).expect_err("other mappings");
    assert!(matches!(err, Error::Spec(_)), "{err}");
    assert!(err.to_string().contains("not the spec's"), "{err}");
    for c in containers {
        c.signal(libc::SIGKILL).expect("kill");
        c.wait_blocking().expect("wait");
    }
}

#[test]
fn a_user_namespace_remounts_binds_keeping_their_locked_flags_and_has_a_terminal() {
    let test = "a_user_namespace_remounts_binds_keeping_their_locked_flags_and_has_a_terminal";
    let Some(dir) = userns_rootfs(test) else {
        return;
    };
    let init = pod_init();
    // A source on a nosuid, nodev, noexec mount, which the user namespace cannot clear.
    let src = tempfile::tempdir().expect("tempdir");
    nix::mount::mount(
        Some("tmpfs"),
        src.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .expect("tmpfs");
    let result = std::panic::catch_unwind(|| {
        std::fs::write(src.path().join("hosts"), "127.0.0.1 localhost\n").expect("write");
        let mut spec = userns_spec(
            &[
                "sh",
                "-c",
                "tty; cat /etc/hosts; grep ' /etc/hosts ' /proc/self/mounts; \
                 echo x >> /etc/hosts 2>&1; true",
            ],
            &init,
            Some(init.namespace()),
        );
        process_mut(&mut spec).set_terminal(Some(true));
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/etc/hosts")
                .typ("bind")
                .source(src.path().join("hosts"))
                .options(vec![
                    "rbind".to_string(),
                    "rprivate".to_string(),
                    "ro".to_string(),
                ])
                .build()
                .expect("mount"),
        );
        spec.set_mounts(Some(mounts));
        let c = Container::create(&id("locked"), &spec, dir.path()).expect("create");
        let Some(Stdio::Pty { master }) = c.take_stdio() else {
            panic!("expected a pty")
        };
        c.start().expect("start");
        let out = read_pty(master);
        assert_eq!(c.wait_blocking().expect("wait").code, 0, "{out}");
        out
    });
    let _ = nix::mount::umount2(src.path(), nix::mount::MntFlags::MNT_DETACH);
    let out = result.expect("container");
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("127.0.0.1 localhost"), "{out:?}");
    let line = out
        .lines()
        .find(|l| l.contains(" /etc/hosts "))
        .expect("the bind's line");
    for flag in ["ro,", "nosuid", "nodev", "noexec"] {
        assert!(line.contains(flag), "{flag} in {line:?}");
    }
    // (The file is the VM root's, which the namespace does not map: the write is refused
    // before the read-only mount is even looked at.)
    assert!(out.contains("can't create /etc/hosts"), "{out:?}");
}
