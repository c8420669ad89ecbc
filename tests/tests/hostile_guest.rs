//! A hostile guest against the host, through a real pod VM: guest root (a privileged
//! container, all capabilities) goes after the host through its volumes and the share
//! that carries them.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use k8s_cri::v1 as cri;
use moat_tests::pod::pod_with_image;

#[tokio::test(flavor = "multi_thread")]
async fn guest_root_cannot_write_read_only_volumes_or_plant_privileges_on_the_host() {
    let p = pod_with_image("hostile").await;
    let ro = tempfile::tempdir().expect("read-only host dir");
    std::fs::write(ro.path().join("config"), b"host config\n").expect("w");
    let rw = tempfile::tempdir().expect("writable host dir");
    let mounts = vec![
        cri::Mount {
            container_path: "/ro".into(),
            host_path: ro.path().display().to_string(),
            readonly: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/rw".into(),
            host_path: rw.path().display().to_string(),
            ..Default::default()
        },
    ];
    let id = Box::pin(p.create_with("root", &["sleep", "100000"], move |c| {
        c.mounts = mounts;
        let sc = c
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        sc.privileged = true;
    }))
    .await
    .unwrap_or_else(|e| panic!("create: {e:?}\n{}", p.m.log()));
    p.start(&id).await;
    p.wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;

    // The read-only volume, remounted read-write by guest root: still read-only, because
    // the host's bind is.
    let r = p
        .exec(
            &id,
            &[
                "sh",
                "-c",
                "mount -o remount,rw /ro; echo pwned > /ro/config; echo new > /ro/new",
            ],
        )
        .await;
    assert_eq!(
        std::fs::read(ro.path().join("config")).expect("r"),
        b"host config\n",
        "{r:?}"
    );
    assert!(!ro.path().join("new").exists(), "{r:?}");

    // Through the writable volume: a block device of the host's disk, a setuid-root file,
    // a setgid executable.
    for cmd in [
        "mknod /rw/disk b 8 0",
        "mknod /rw/mem c 1 1",
        "mknod /rw/tty c 5 0",
        "touch /rw/suid && chmod u+s /rw/suid",
        "touch /rw/sgid && chmod g+s /rw/sgid",
    ] {
        let r = p.exec(&id, &["sh", "-c", cmd]).await;
        assert_ne!(r.exit_code, 0, "{cmd}: {r:?}");
    }
    for entry in std::fs::read_dir(rw.path()).expect("ls") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("meta");
        let ft = meta.file_type();
        assert!(
            !ft.is_block_device() && !ft.is_char_device(),
            "{:?}",
            entry.path()
        );
        assert_eq!(
            meta.permissions().mode() & 0o6000,
            0,
            "no setuid or setgid on the host: {:?}",
            entry.path()
        );
    }
    // Guest root mounts the volumes share's own root and fills it: a 1 MiB tmpfs on the
    // host, not the host's /run.
    let r = p
        .exec(&id, &["mount", "-t", "virtiofs", "volumes", "/tmp"])
        .await;
    assert_eq!(r.exit_code, 0, "guest root mounts the share: {r:?}");
    let r = p
        .exec(
            &id,
            &["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=8"],
        )
        .await;
    assert_ne!(r.exit_code, 0, "8 MiB do not fit: {r:?}");
    let size = p.exec(&id, &["stat", "-c", "%s", "/tmp/fill"]).await;
    assert_eq!(size.exit_code, 0, "{size:?}");
    let size: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .expect("a size");
    assert!(
        size > 0 && size <= 1 << 20,
        "{size} bytes landed in the share's root"
    );
    // Ordinary writes still work.
    let r = p
        .exec(&id, &["sh", "-c", "echo data > /rw/plain && mkdir /rw/d"])
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(
        std::fs::read(rw.path().join("plain")).expect("r"),
        b"data\n"
    );
}

/// A guest that floods its output and its console costs moatd bounded disk and does not
/// stall the CRI: 1 GiB of newlines written in 4 MiB chunks (each newline a CRI record)
/// and the serial console flooded at the same time (guest root makes its own node for the
/// serial port: the guest is not trusted to keep its devices).
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_output_and_console_stays_capped_and_the_cri_answers() {
    const LOG_CAP: u64 = 8 << 20;
    let p = moat_tests::pod::pod_with(
        "flood",
        &format!("[containers]\nlog_size_max = {LOG_CAP}\n"),
        |_| {},
    )
    .await;
    let id = Box::pin(p.create_with(
        "flood",
        &[
            "sh",
            "-c",
            "(mknod /dev/ttyS0 c 4 64 && head -c 2621440 /dev/zero | tr '\\0' x > /dev/ttyS0) & \
             dd if=/dev/zero bs=4M count=256 2>/dev/null | tr '\\0' '\\n'; wait; echo done",
        ],
        |c| {
            c.linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
                .privileged = true;
        },
    ))
    .await
    .unwrap_or_else(|e| panic!("create: {e:?}\n{}", p.m.log()));
    p.start(&id).await;
    let mut rt = p.m.runtime().await;
    let mut latencies = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let t = std::time::Instant::now();
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list");
        latencies.push(t.elapsed());
        let st = p.status(&id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            assert_eq!(st.exit_code, 0, "{st:?}");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(900),
            "the flood did not end in 15 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let slowest = latencies[latencies.len() - 1];
    println!(
        "flood: {:.1} s; ListPodSandbox during it, {} calls: p99 {:.1} ms, slowest {:.1} ms",
        started.elapsed().as_secs_f64(),
        latencies.len(),
        p99.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0
    );
    // Under 100 ms, as the CRI's callers expect; the slowest call is allowed the odd
    // scheduling hiccup of a 2-core machine running the guest and moatd's debug build, but
    // a stalled runtime (the old quadratic formatter on a tokio worker) would take seconds.
    assert!(p99 < std::time::Duration::from_millis(100), "{p99:?}");
    assert!(slowest < std::time::Duration::from_secs(1), "{slowest:?}");
    // The log: under its cap, whole records, and the end of the output kept.
    let log = p.logs.path().join("flood/0.log");
    let len = std::fs::metadata(&log).expect("log").len();
    assert!(len > 0 && len <= LOG_CAP, "log {len} bytes");
    // (The log writer finishes a moment after the exit is recorded.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).expect("log");
        if text.ends_with(" stdout F done\n") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        text.ends_with(" stdout F done\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    assert!(
        text.ends_with(" stdout F done\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    // The console: the head and a rotating tail, at most the default 2 MiB (+1 KiB for the
    // marker) across its files.
    let vm_dir =
        p.m.root()
            .with_file_name("run")
            .join("vm")
            .join(&p.id[..12]);
    let console: u64 = ["console.log", "console.log.1", "console.log.2"]
        .iter()
        .filter_map(|f| std::fs::metadata(vm_dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        console > 1 << 20,
        "the console was flooded: {console} bytes"
    );
    assert!(
        console <= (2 << 20) + 1024,
        "console files hold {console} bytes"
    );
    let head = std::fs::read_to_string(vm_dir.join("console.log")).expect("console");
    assert!(
        head.contains("bytes of console output dropped"),
        "the marker is there"
    );
}

/// The guest's device cgroup, as under runc: a container without privileges (CAP_MKNOD is
/// among its default capabilities) can make any device node but open only runc's default
/// devices (/dev/null, zero, full, random, urandom, tty, ptmx, the ptys); the console,
/// /dev/mem and a disk it made stay shut (EPERM). A privileged container opens what it
/// makes.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_default_devices_open_in_a_container_unless_it_is_privileged() {
    let started = std::time::Instant::now();
    let p = pod_with_image("devices").await;
    let plain = Box::pin(p.create("plain", &["sleep", "100000"]))
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", p.m.log()));
    p.start(&plain).await;
    p.wait_state(&plain, cri::ContainerState::ContainerRunning)
        .await;
    for cmd in [
        "mknod /tmp/con c 5 1 && cat /tmp/con",
        "mknod /tmp/mem c 1 1 && head -c1 /tmp/mem",
        "mknod /tmp/disk b 254 0 && head -c1 /tmp/disk",
        "mknod /tmp/con2 c 5 1 && echo pwned > /tmp/con2",
    ] {
        let r = p.exec(&plain, &["sh", "-c", cmd]).await;
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            r.exit_code != 0 && stderr.contains("Operation not permitted"),
            "{cmd}: {r:?}"
        );
    }
    // mknod itself is allowed (runc's `c *:* m`, `b *:* m`): the nodes are there.
    let r = p
        .exec(
            &plain,
            &[
                "sh",
                "-c",
                "test -c /tmp/con && test -c /tmp/mem && test -b /tmp/disk",
            ],
        )
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    // The default devices still work, and so do nodes of them the container makes.
    let r = p
        .exec(
            &plain,
            &[
                "sh",
                "-c",
                "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 1 /dev/urandom > /dev/null \
                 && mknod /tmp/null c 1 3 && echo x > /tmp/null && echo ok",
            ],
        )
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "4\nok\n", "{r:?}");

    let root = Box::pin(p.create_with("root", &["sleep", "100000"], |c| {
        c.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    }))
    .await
    .unwrap_or_else(|e| panic!("create: {e:?}\n{}", p.m.log()));
    p.start(&root).await;
    p.wait_state(&root, cri::ContainerState::ContainerRunning)
        .await;
    let r = p
        .exec(
            &root,
            &[
                "sh",
                "-c",
                "mknod /tmp/con c 5 1 && echo moat-devices-test > /tmp/con \
                 && mknod /tmp/mem c 1 1 && exec 3< /tmp/mem",
            ],
        )
        .await;
    assert_eq!(
        r.exit_code, 0,
        "a privileged container opens its nodes: {r:?}"
    );
    println!(
        "device cgroup e2e: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
