//! Mounts the host makes under a kept directory after the VMM confined itself (moatd binds
//! a container's volumes and image layers into the shares at CreateContainer) show in the
//! jail. Two processes: a stand-in host, in a mount namespace of its own (so the test never
//! touches the real host's mounts) with the share on a *shared* mount, and the VMM it
//! starts, which confines itself keeping the share; then the host mounts under the share,
//! and the VMM looks.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use moat_vmm::config::JailConfig;
use moat_vmm::jail::{Keep, mounts};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// The share, under the test's directory.
fn share(dir: &Path) -> std::path::PathBuf {
    dir.join("share")
}

fn mount_tmpfs(at: &Path) {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", at.display()));
}

/// The stand-in host: its own mount namespace, the share a shared tmpfs; starts the VMM
/// child (`vmm` re-runs this test binary as `test`, case `vmm_case`), waits for it to be
/// confined, mounts `late/` under the share with a file in it, and relays what the VMM saw.
/// Exits with the VMM child's status.
pub fn host(dir: &Path, test: &str, child_env: &str, vmm_case: &str) -> ! {
    unshare(CloneFlags::CLONE_NEWNS).expect("a mount namespace for the stand-in host");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("keep the real host's mounts out of it");
    let share = share(dir);
    std::fs::create_dir_all(&share).expect("mkdir share");
    mount_tmpfs(&share);
    mount(
        None::<&str>,
        &share,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .expect("make the share a shared mount");
    std::fs::create_dir(share.join("late")).expect("mkdir late");

    let exe = std::env::current_exe().expect("this test binary");
    let mut vmm = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(child_env, vmm_case)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the VMM child");
    let mut from_vmm = BufReader::new(vmm.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("confined") {
        line.clear();
        if from_vmm.read_line(&mut line).expect("read the VMM child") == 0 {
            break;
        }
    }
    // Mounted now, after the VMM's namespace was made.
    mount_tmpfs(&share.join("late"));
    std::fs::write(share.join("late/x"), b"late").expect("write late/x");
    let mut to_vmm = vmm.stdin.take().expect("stdin");
    to_vmm.write_all(b"go\n").expect("tell the VMM child");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut from_vmm, &mut rest).expect("the VMM child's report");
    print!("{rest}");
    std::io::stdout().flush().expect("flush");
    let status = vmm.wait().expect("the VMM child");
    std::process::exit(status.code().unwrap_or(1));
}

/// The VMM: confined keeping the share; once the host mounted `late/`, reports whether the
/// file in it shows.
pub fn vmm(dir: &Path) -> ! {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let jail = JailConfig {
        root,
        seccomp: false,
        mount_namespace: true,
    };
    mounts::enter(&jail, &[Keep::writable(share(dir))]).expect("enter the jail");
    println!("confined");
    std::io::stdout().flush().expect("flush");
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .expect("wait for the host");
    let seen = std::fs::read(share(dir).join("late/x")).ok();
    println!("late mount seen: {}", seen.as_deref() == Some(b"late"));
    std::io::stdout().flush().expect("flush");
    std::process::exit(if seen.is_some() { 0 } else { 1 });
}
