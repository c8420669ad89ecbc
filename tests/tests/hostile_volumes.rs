//! A hostile guest racing moatd's volume set-up, through a real pod VM.
//!
//! Each container's CRI mounts are bound by moatd onto `<vm dir>/volumes/<container>/<n>`,
//! inside the read-write `volumes` virtio-fs share, which guest root can mount itself. Here
//! guest root (a privileged container) mounts the share and, for the whole test, runs two
//! loops against it (see `attack`): one renames every container folder and every numbered
//! mount point in it away, plants a symlink in its place (to a victim directory the test owns
//! on the host, to the victim file in it, or to `/`), and swaps them back; the other, the
//! moment a new container folder appears, plants every mount point name moatd has not made yet
//! as a symlink to `<victim>/<n>` (a directory of the victim's for a directory mount, a file
//! for a file mount). Meanwhile containers asking for many hostPath mounts (writable
//! directories, read-only directories, single files) are created, started, stopped and
//! removed in a loop, so moatd keeps setting volumes up and releasing them while the names
//! under it change.
//!
//! What it proves: moatd never resolves a guest-controlled name in the share through a
//! symlink when it sets volumes up or releases them, and a sabotaged set-up fails cleanly.
//! Had moatd made or opened a mount point by path (`mkdir -p` then `mount`, or
//! `open(O_CREAT)` for a file mount), the planted links would have taken its binds onto the
//! victim's folders or files (or `/`), or created or truncated files there. After every round
//! and at the end the test checks that the victim tree is byte-for-byte unchanged (contents,
//! modes, inodes, mtimes, no new entries), that no mount this test could have caused appeared
//! outside the pod's VM directory (under the victim, on `/` or right below it, or a bind of
//! the pod's volumes anywhere else), and that no share-like name appeared in `/`. Every CRI
//! call answers within a deadline, failures are ordinary gRPC errors, moatd keeps serving,
//! the read-only volume is unchanged on the host, and once the pod is removed nothing of it
//! stays mounted.
//!
//! How often the guest gets inside moatd's set-up is printed, not asserted: each container's
//! folder is a fresh tmpfs by the time moatd makes mount points in it, so the guest's
//! planted names rarely meet one (before that, 1 to 10 set-ups a run did, and were refused
//! with "File exists"). The set-up's refusal to follow a planted symlink is asserted where
//! the race can be driven hard, on the host (`sandbox/volumes.rs`, a thread swapping names
//! through 300 set-ups); here the guest's attempts to move a container's folder are counted
//! and must have happened.
//!
//! Nor does a removed container leave anything mounted in the share: each container's
//! folder there is a mount point of its own, which the guest cannot rename away from where
//! its release looks for its binds.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use moat_tests::pod::{Pod, pod_with_image};
use tonic::Code;

/// Container rounds raced by the guest.
const ROUNDS: usize = 25;
/// The longest any single CRI call may take: longer is a hang.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// Volumes each raced container asks for: mount `n` is a writable directory when
/// `n % 3 == 0`, a read-only directory when 1, a single file when 2. Many, so that moatd's
/// set-up of one container lasts long enough for the (possibly emulated, slow) guest to act
/// in the middle of it.
const MOUNTS: usize = 90;

/// Guest root's attack, run in a privileged container: it mounts the `volumes` share and runs
/// two loops until the test ends.
///
/// - swap: for every container folder, tries to rename it away (`.x`) and plant a symlink in
///   its place (to the victim dir, `/` or the victim file, rotating): moatd makes each
///   folder a mount point, so the kernel refuses (EBUSY), counted in /tmp/refused; inside
///   it, renames every numbered mount point away (the bound ones refuse too) and plants
///   symlinks in their places (to `<victim>/<n>` or `/<n>`, rotating); then swaps
///   everything back. Counts the names swapped in /tmp/swaps, its passes in /tmp/alive.
/// - plant: the moment a new container folder shows up (moatd is filling it), plants every
///   mount point name moatd has not made yet, `n`, as a symlink to `<victim>/n`: a directory
///   of the victim's for a directory mount, a file of the victim's for a file mount, so that
///   a set-up that followed it would mount over, create in or truncate the victim. Counts the
///   symlinks in /tmp/plants.
///
/// A fork costs the emulated guest tens of milliseconds, so each `mv` and `ln` handles all
/// the names of a folder at once; a planted link is named after its target's last component.
/// The swap loop runs at a lower priority: the plant loop's reaction time is what lets the
/// guest act inside moatd's set-up of a container.
fn attack(victim: &Path, victim_file: &Path) -> String {
    let v = victim.display().to_string();
    assert!(
        !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"'),
        "{v}"
    );
    let list = |base: &str| {
        (0..MOUNTS)
            .map(|n| format!("{base}/{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"V='{v}'; VF='{vf}'; TV='{tv}'; TR='{tr}'
mkdir -p /tmp/share && mount -t virtiofs volumes /tmp/share && cd /tmp/share || exit 1
swap() {{
  s=0; i=0; r=0; alive=0
  while :; do
    for d in *; do
      case "$d" in *.x|'*') continue;; esac
      [ -L "$d" ] && continue
      [ -d "$d" ] || continue
      i=$((i+1))
      case $((i % 3)) in 0) t="$V"; T="$TV";; 1) t=/; T="$TR";; *) t="$VF"; T="$TV";; esac
      if mv -T "$d" "$d.x" 2>/dev/null; then
        ln -sT "$t" "$d" 2>/dev/null && s=$((s+1))
        w="$d.x"
      else
        # A container's folder is a mount point: the kernel refuses to move it.
        r=$((r+1)); echo $r > /tmp/refused
        w="$d"
      fi
      a="$w/.aside"
      if mkdir "$a" 2>/dev/null; then
        mv "$w"/[0-9]* "$a/" 2>/dev/null
        set -- "$a"/[0-9]*
        if [ -e "$1" ] || [ -L "$1" ]; then
          ln -s $T "$w/" 2>/dev/null
          s=$((s+$#))
          l=; for m in "$@"; do l="$l $w/${{m##*/}}"; done
          rm -f $l; mv "$@" "$w/" 2>/dev/null
        fi
        rmdir "$a" 2>/dev/null
      fi
      if [ "$w" != "$d" ]; then rm -f "$d"; mv -T "$d.x" "$d" 2>/dev/null; fi
      echo $s > /tmp/swaps
    done
    alive=$((alive+1)); echo $alive > /tmp/alive
  done
}}
plant() {{
  p=0; seen=
  while :; do
    for d in *; do
      case "$d" in *.x|'*') continue;; esac
      case " $seen " in *" $d "*) continue;; esac
      [ -L "$d" ] && continue
      [ -d "$d" ] || continue
      seen="$seen $d"
      ln -s $TV "$d/" 2>/dev/null
      for m in "$d"/*; do [ -L "$m" ] && p=$((p+1)); done
      echo $p > /tmp/plants
    done
  done
}}
swap & renice -n 10 -p $! >/dev/null; plant & wait
"#,
        vf = victim_file.display(),
        tv = list(&v),
        tr = list(""),
    )
}

/// What a path and everything below it look like, without following symlinks.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: PathBuf,
    ino: u64,
    mode: u32,
    uid: u32,
    len: u64,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
}

/// `path` and everything below it, sorted by path.
fn snapshot(path: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat a victim");
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("ls a victim") {
                todo.push(e.expect("entry").path());
            }
        }
        out.push(Entry {
            content: meta
                .is_file()
                .then(|| std::fs::read(&p).expect("read a victim")),
            path: p,
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// One of the host's mounts: its device, its root within that filesystem, its mount point.
type MountEntry = (String, PathBuf, PathBuf);

/// The host's mounts (this mount namespace: moatd's), from mountinfo.
fn mounts() -> Vec<MountEntry> {
    let unescape = |f: &str| {
        PathBuf::from(
            f.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\"),
        )
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((
                f.get(2)?.to_string(),
                unescape(f.get(3)?),
                unescape(f.get(4)?),
            ))
        })
        .collect()
}

/// What a bind of host path `p` shows as in mountinfo: its device and root.
fn bind_source(p: &Path) -> (String, PathBuf) {
    let p = std::fs::canonicalize(p).expect("canonicalize");
    let (dev, root, at) = mounts()
        .into_iter()
        .filter(|m| p.starts_with(&m.2))
        .max_by_key(|m| m.2.components().count())
        .expect("the mount holding a path");
    (
        dev,
        root.join(p.strip_prefix(&at).expect("below its mount")),
    )
}

/// Watches the host's mounts for ones this test's attack could have caused outside the
/// pod's VM directory. Other tests may run beside this one and mount their own things, so a
/// new mount counts when it is this test's doing: at or below the victim, on `/` or a
/// folder right below it, in this test's moatd directory, or a bind of one of the pod's
/// volumes (by device and root, wherever it landed).
struct MountWatch {
    before: HashMap<MountEntry, usize>,
    vm_dir: PathBuf,
    moatd_dir: PathBuf,
    victim: PathBuf,
    sources: Vec<(String, PathBuf)>,
}

impl MountWatch {
    /// What is mounted now, to compare with later.
    fn table() -> HashMap<MountEntry, usize> {
        let mut out = HashMap::new();
        for m in mounts() {
            *out.entry(m).or_default() += 1;
        }
        out
    }

    fn new(
        before: HashMap<MountEntry, usize>,
        vm_dir: &Path,
        moatd_dir: &Path,
        victim: &Path,
        volumes: &[&Path],
    ) -> Self {
        Self {
            before,
            vm_dir: vm_dir.to_owned(),
            moatd_dir: moatd_dir.to_owned(),
            victim: std::fs::canonicalize(victim).expect("canonicalize"),
            sources: volumes.iter().map(|v| bind_source(v)).collect(),
        }
    }

    /// The new mounts outside the VM directory that are this test's doing.
    fn escaped(&self) -> Vec<MountEntry> {
        let mut out: Vec<MountEntry> = Self::table()
            .into_iter()
            .filter(|(m, n)| *n > self.before.get(m).copied().unwrap_or(0))
            .map(|(m, _)| m)
            .filter(|(dev, root, at)| {
                !at.starts_with(&self.vm_dir)
                    && (at.starts_with(&self.victim)
                        || at.parent().is_none_or(|p| p == Path::new("/"))
                        || at.starts_with(&self.moatd_dir)
                        || self.sources.iter().any(|s| s.0 == *dev && s.1 == *root))
            })
            .collect();
        out.sort();
        out
    }
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.2)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort();
    out
}

/// Entries of `/` named like what moatd makes in the share (a number, a 12-hex-digit
/// container key) or the guest's renames of them (`.x`, `.y`).
fn share_like_names_in_root() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/")
        .expect("ls /")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let base = n.trim_end_matches(".x").trim_end_matches(".y");
            base.bytes().all(|b| b.is_ascii_digit())
                || (base.len() == 12 && base.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    out.sort();
    out
}

/// A failed call of a round: the round, the call, the gRPC code and message.
type Failure = (usize, &'static str, Code, String);

/// How many set-ups the guest broke inside moatd's own window: CreateContainer failing
/// with one of prepare's errors (a planted name met), as opposed to failing later in the
/// agent, in the guest.
fn won(errors: &[Failure]) -> usize {
    errors
        .iter()
        .filter(|e| {
            e.1 == "create"
                && ["the volume dir", "a volume mount point", "volume bind of"]
                    .iter()
                    .any(|m| e.3.contains(m))
        })
        .count()
}

/// A CRI call that must answer within `CALL_DEADLINE`.
async fn timed<T>(
    what: &str,
    p: &Pod,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_DEADLINE, f).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => panic!(
            "{what} hung for {CALL_DEADLINE:?}; moatd log tail:\n{}",
            tail(&p.m.log())
        ),
    }
}

/// A counter the guest's loops keep in `file`.
async fn guest_count(p: &Pod, id: &str, file: &str) -> u64 {
    let r = p.exec(id, &["cat", file]).await;
    String::from_utf8_lossy(&r.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The end of moatd's log, for failure messages.
fn tail(s: &str) -> &str {
    &s[s.len().saturating_sub(8000)..]
}

#[tokio::test(flavor = "multi_thread")]
async fn symlink_swaps_racing_volume_set_up_never_reach_outside_the_pod() {
    let started = Instant::now();
    let before_mounts = MountWatch::table();
    let root_names = share_like_names_in_root();

    // The victim: a directory and a file of the host's, outside the pod.
    let victim = tempfile::Builder::new()
        .prefix("moat-victim")
        .tempdir()
        .expect("victim dir");
    let victim_file = victim.path().join("secret");
    std::fs::write(&victim_file, b"the host's secret\n").expect("w");
    std::fs::create_dir(victim.path().join("sub")).expect("mkdir");
    std::fs::write(victim.path().join("sub/keep"), b"keep\n").expect("w");
    // What the guest's planted mount points point at: `<victim>/n`, of the mount's kind.
    for n in 0..MOUNTS {
        let at = victim.path().join(n.to_string());
        if n % 3 == 2 {
            std::fs::write(&at, format!("victim file {n}\n")).expect("w");
        } else {
            std::fs::create_dir(&at).expect("mkdir");
            std::fs::write(at.join("keep"), b"keep\n").expect("w");
        }
    }
    let victim_before = snapshot(victim.path());

    // The pod's own volumes: a writable dir, a read-only dir, a single file (the guest may
    // write the first and last: they are its).
    let data = tempfile::tempdir().expect("data dir");
    let ro = tempfile::tempdir().expect("read-only dir");
    std::fs::write(ro.path().join("config"), b"read-only config\n").expect("w");
    let ro_before = snapshot(ro.path());
    let single = tempfile::NamedTempFile::new().expect("single file");
    std::fs::write(single.path(), b"single file\n").expect("w");

    let p = pod_with_image("hostile-volumes").await;
    let vm_dir =
        p.m.root()
            .with_file_name("run")
            .join("vm")
            .join(&p.id[..12]);
    assert!(vm_dir.join("volumes").is_dir(), "{}", vm_dir.display());
    let watch = MountWatch::new(
        before_mounts,
        &vm_dir,
        p.m.root().parent().expect("moatd's dir"),
        victim.path(),
        &[data.path(), ro.path(), single.path()],
    );

    // Guest root: mounts the share and swaps names in it for the rest of the test.
    let script = attack(victim.path(), &victim_file);
    let hostile = Box::pin(p.create_with("attacker", &["sh", "-c", &script], |c| {
        c.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    }))
    .await
    .unwrap_or_else(|e| panic!("create the attacker: {e:?}\n{}", tail(&p.m.log())));
    p.start(&hostile).await;
    let racing = moat_tests::wait_until_async(Duration::from_secs(30), || async {
        guest_count(&p, &hostile, "/tmp/alive").await > 0
    })
    .await;
    if !racing {
        let r = p
            .exec(
                &hostile,
                &[
                    "sh",
                    "-c",
                    "cat /tmp/alive /tmp/swaps /tmp/plants; ls -la /tmp/share /tmp/share/*; ps",
                ],
            )
            .await;
        panic!(
            "the guest's loops are not running: {:?}\n{}\n{}{}",
            p.status(&hostile).await,
            p.log("attacker"),
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }

    let mounts: Vec<cri::Mount> = (0..MOUNTS)
        .map(|n| {
            let (host, readonly) = match n % 3 {
                0 => (data.path(), false),
                1 => (ro.path(), true),
                _ => (single.path(), false),
            };
            cri::Mount {
                container_path: format!("/v{n}"),
                host_path: host.display().to_string(),
                readonly,
                ..Default::default()
            }
        })
        .collect();
    let mut rt = p.m.runtime().await;
    let (mut created, mut started_ok) = (0, 0);
    let mut errors: Vec<Failure> = Vec::new();
    let mut rounds = 0;
    while rounds < ROUNDS {
        let round = rounds;
        rounds += 1;
        let name = format!("vol{round}");
        let cmd: &[&str] = if round % 2 == 0 {
            &["sh", "-c", "cat /v1/config /v2; ls /v0"]
        } else {
            &["sleep", "100000"]
        };
        let ms = mounts.clone();
        let create = tokio::time::timeout(
            CALL_DEADLINE,
            Box::pin(p.create_with(&name, cmd, move |c| c.mounts = ms)),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: create hung\n{}", tail(&p.m.log())));
        match create {
            Err(e) => errors.push((round, "create", e.code(), e.message().to_owned())),
            Ok(id) => {
                created += 1;
                let start = timed(
                    "start",
                    &p,
                    rt.start_container(cri::StartContainerRequest {
                        container_id: id.clone(),
                    }),
                )
                .await;
                match start {
                    Ok(_) => started_ok += 1,
                    Err(e) => errors.push((round, "start", e.code(), e.message().to_owned())),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Err(e) = timed(
                    "stop",
                    &p,
                    rt.stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout: 0,
                    }),
                )
                .await
                {
                    errors.push((round, "stop", e.code(), e.message().to_owned()));
                }
                let removed = timed(
                    "remove",
                    &p,
                    rt.remove_container(cri::RemoveContainerRequest {
                        container_id: id.clone(),
                    }),
                )
                .await;
                assert!(removed.is_ok(), "round {round}: remove: {removed:?}");
            }
        }
        // After every round: nothing outside the pod was mounted or touched.
        let escaped = watch.escaped();
        assert!(
            escaped.is_empty(),
            "round {round}: mounted outside the pod's VM dir: {escaped:?}"
        );
        assert_eq!(
            snapshot(victim.path()),
            victim_before,
            "round {round}: the victim changed"
        );
    }
    // Every raced container is gone, and so is everything it had bound in the share (the
    // attacker has no volumes, so no folder there).
    let share_root = vm_dir.join("volumes");
    let mut left_in_share: Vec<PathBuf> = mounts_under(&share_root)
        .into_iter()
        .filter(|m| *m != share_root)
        .filter_map(|m| {
            m.strip_prefix(&share_root)
                .ok()
                .and_then(|r| r.components().next())
                .map(|c| PathBuf::from(c.as_os_str()))
        })
        .collect();
    let left_binds = left_in_share.len();
    left_in_share.dedup();
    let swaps = guest_count(&p, &hostile, "/tmp/swaps").await;
    let plants = guest_count(&p, &hostile, "/tmp/plants").await;
    let refused = guest_count(&p, &hostile, "/tmp/refused").await;
    let won = won(&errors);
    println!(
        "hostile volumes: {rounds} rounds of {MOUNTS} mounts: {created} created, {started_ok} \
         started, {} errors ({won} in moatd's set-up); the guest swapped {swaps} names for \
         symlinks, planted {plants} ahead of moatd and was refused {refused} renames of a \
         container's folder; {:.1} s so far",
        errors.len(),
        started.elapsed().as_secs_f64()
    );
    for e in &errors {
        println!("  round {}: {} failed: {:?}: {}", e.0, e.1, e.2, e.3);
    }
    assert_eq!(
        left_binds, 0,
        "mounts of removed containers still in the share: {left_in_share:?}"
    );

    // Failures are the CRI's answers, not a broken transport or a dead moatd.
    for (round, step, code, msg) in &errors {
        assert!(
            !matches!(code, Code::Unavailable | Code::Cancelled | Code::Unknown) && !msg.is_empty(),
            "round {round}: {step}: {code:?} {msg}"
        );
    }
    assert!(
        refused > 0,
        "the guest never tried to move a container's folder away"
    );
    assert!(
        created > 0,
        "no set-up succeeded under the race: nothing was tested ({errors:?})"
    );
    let pods = timed(
        "list pods",
        &p,
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
    )
    .await
    .expect("moatd still answers");
    assert!(
        pods.items
            .iter()
            .any(|s| s.id == p.id && s.state == cri::PodSandboxState::SandboxReady as i32),
        "{pods:?}"
    );

    // The host: victims unchanged, nothing new in `/`, nothing mounted outside the pod, and
    // the read-only volume untouched.
    assert_eq!(snapshot(victim.path()), victim_before, "the victim changed");
    assert_eq!(
        std::fs::read(&victim_file).expect("r"),
        b"the host's secret\n"
    );
    assert_eq!(
        share_like_names_in_root(),
        root_names,
        "new share-like names in /"
    );
    assert_eq!(
        snapshot(ro.path()),
        ro_before,
        "the read-only volume changed"
    );
    let escaped = watch.escaped();
    assert!(
        escaped.is_empty(),
        "mounted outside the pod's VM dir: {escaped:?}"
    );

    // Removing the pod leaves nothing of it mounted.
    timed(
        "stop pod",
        &p,
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        }),
    )
    .await
    .expect("stop pod");
    timed(
        "remove pod",
        &p,
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        }),
    )
    .await
    .expect("remove pod");
    let left = mounts_under(&vm_dir);
    assert!(
        left.is_empty(),
        "still mounted after the pod's removal: {left:?}"
    );
    let escaped = watch.escaped();
    assert!(escaped.is_empty(), "new mounts after the test: {escaped:?}");
    assert_eq!(snapshot(victim.path()), victim_before, "the victim changed");
    assert_eq!(
        snapshot(ro.path()),
        ro_before,
        "the read-only volume changed"
    );
    println!(
        "hostile volumes: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
