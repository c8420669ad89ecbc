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
