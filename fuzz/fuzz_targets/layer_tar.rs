#![no_main]
//! Untrusted input: an image layer blob from a registry (or an image archive), unpacked by
//! `images::unpack::unpack_layer` into its own snapshot directory: tar, optionally gzip or
//! zstd compressed, with whiteouts, hard links, symlinks, devices and xattrs.
//!
//! `unpack_layer` reads the blob from a file (there is no reader-taking entry point), so
//! each input is written to a file next to the destination in a fresh temporary directory,
//! beside a file and a directory that stand for the rest of the host. Checks besides "no
//! panic": nothing outside the destination changes (names, types, modes, owners, contents,
//! link counts), and an uncompressed layer's DiffID is the sha256 of its bytes.
//!
//! Input: the first byte picks how the rest becomes the blob: even, as is (the fuzzer may
//! produce gzip or zstd magic itself); odd, gzip-compressed here, so that the fuzzer works
//! on the tar structure of a compressed layer.

use std::io::Write as _;
use std::path::Path;

use flate2::Compression as Level;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{Input, differs, snapshot};
use moat_host::images::digest;
use moat_host::images::manifest::Compression;
use moat_host::images::unpack::{UnpackLimits, unpack_layer};

const LIMITS: UnpackLimits = UnpackLimits {
    max_unpacked_bytes: 8 << 20,
    max_entries: 512,
};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let gzip = input.u8() & 1 == 1;
    let tar = input.rest();
    let blob_bytes = if gzip {
        let mut enc = GzEncoder::new(Vec::new(), Level::fast());
        enc.write_all(tar).expect("gzip");
        enc.finish().expect("gzip")
    } else {
        tar.to_vec()
    };

    let root = tempfile::tempdir().expect("tempdir");
    let blob = root.path().join("blob");
    let dest = root.path().join("dest");
    std::fs::write(&blob, &blob_bytes).expect("blob");
    std::fs::create_dir(&dest).expect("dest");
    std::fs::create_dir_all(root.path().join("host/etc")).expect("host");
    std::fs::write(
        root.path().join("host/etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(root.path().join("secret"), b"not yours\n").expect("secret");
    let skip = [Path::new("dest")];
    let before = snapshot(root.path(), &skip);

    let result = unpack_layer(&blob, &dest, "sha256:fuzz", LIMITS);

    if let Some(d) = differs(&before, &snapshot(root.path(), &skip)) {
        panic!("unpacking wrote outside its directory: {d}");
    }
    if let Ok(u) = result
        && !gzip
        && Compression::sniff(&blob_bytes) == Compression::None
    {
        assert_eq!(
            u.diff_id,
            digest::of(&blob_bytes),
            "DiffID of an uncompressed layer"
        );
    }
});
