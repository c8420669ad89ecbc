//! Network namespaces pinned by bind mounts (as `ip netns add` makes them), and running code
//! inside one.
//!
//! Namespace switches are per thread, so both creating a namespace (`unshare`) and entering
//! one (`setns`) happen on a fresh OS thread that exits afterwards: never on a tokio worker or
//! a blocking-pool thread, which would carry the namespace into unrelated work.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where `ip netns` looks for named namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

/// The netns name of a sandbox: `moat-` and the first 12 characters of its id.
pub fn netns_name(sandbox_id: &str) -> String {
    let short: String = sandbox_id.chars().take(12).collect();
    format!("moat-{short}")
}

/// Runs `f` on a new OS thread and awaits its result without blocking the runtime.
async fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
}

/// Creates a new network namespace pinned at `path` (a bind mount of the creating thread's
/// `/proc/self/task/<tid>/ns/net`). A live namespace already there is an error (it may be
/// another pod's); a bare file left by a crash is replaced.
pub async fn create(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    if is_netns(path) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a network namespace is already mounted there",
        ));
    }
    remove(path).await?;
    // The mount point: an empty file, like `ip netns add` makes.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let target = path.to_owned();
    let made = on_thread("moat-netns-new", move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        nix::mount::mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
        // The thread exits now; the bind mount keeps the namespace alive.
    })
    .await;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Unmounts and deletes the namespace file at `path`. Nothing there is fine.
pub async fn remove(path: &Path) -> io::Result<()> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || remove_sync(&p))
        .await
        .map_err(io::Error::other)?
}

fn remove_sync(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a bare file left by a crash).
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a live network namespace (an nsfs file, i.e. the bind mount is there).
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`. Sockets,
/// tun/tap devices and netlink connections that `f` opens belong to that namespace for their
/// whole life, whichever thread uses them afterwards.
pub async fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    if !is_netns(path) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a network namespace (missing or not mounted)",
        ));
    }
    let ns = File::open(path)?;
    on_thread("moat-netns", move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        drop(ns);
        f()
    })
    .await
}

/// The netns file of a sandbox under `dir`.
pub fn netns_path(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(netns_name(sandbox_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_prefixed() {
        assert_eq!(
            netns_name("0123456789abcdef0123456789abcdef"),
            "moat-0123456789ab"
        );
        assert_eq!(netns_name("abc"), "moat-abc");
        assert_eq!(
            netns_path(Path::new("/run/netns"), "abc"),
            PathBuf::from("/run/netns/moat-abc")
        );
    }

    #[tokio::test]
    async fn remove_is_idempotent_and_handles_bare_files() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("ns");
        remove(&p).await.expect("missing is fine");
        std::fs::write(&p, "").expect("w");
        assert!(!is_netns(&p));
        remove(&p).await.expect("bare file");
        assert!(!p.exists());
        assert!(run_in(&p, || Ok(())).await.is_err());
    }

    /// Needs root (CAP_SYS_ADMIN); skipped otherwise.
    #[tokio::test]
    async fn create_enter_remove() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("moat-test");
        create(&p).await.expect("create");
        assert!(is_netns(&p));
        let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("ns");
        let inside = run_in(&p, || std::fs::read_link("/proc/thread-self/ns/net"))
            .await
            .expect("run");
        assert_ne!(ours, inside);
        // The caller's own namespace is untouched.
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("ns"),
            ours
        );
        // A live one is never replaced.
        let e = create(&p).await.expect_err("exists");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            run_in(&p, || std::fs::read_link("/proc/thread-self/ns/net"))
                .await
                .expect("run"),
            inside
        );
        remove(&p).await.expect("remove");
        // A bare file (crash between creating and mounting) is replaced.
        std::fs::write(&p, "").expect("w");
        create(&p).await.expect("over a bare file");
        assert!(is_netns(&p));
        remove(&p).await.expect("remove");
        assert!(!p.exists());
        remove(&p).await.expect("remove twice");
    }
}
