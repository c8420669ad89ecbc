#![no_main]
//! Untrusted input: what a registry answers for a manifest request (an OCI image manifest
//! or index, a Docker schema 2 manifest or manifest list: `images::manifest::parse`, then
//! the platform pick and the checks of each descriptor a pull makes), and the image names
//! CRI clients give (`images::reference::ImageRef::parse` for PullImage,
//! `reference::parse_local` for ImageStatus, RemoveImage, CreateContainer...).
//!
//! Input: the first byte picks what the rest is: 0 a manifest document, 1 a reference to
//! pull, 2 a local image name. Checks besides "no panic": a reference's canonical form
//! parses back to the same reference (moatd stores and looks images up by it), and a local
//! name classified as a reference is one.

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_host::images::digest;
use moat_host::images::manifest::{Fetched, check_layer_media_type, parse, select_platform};
use moat_host::images::reference::{ImageRef, LocalRef, is_local_registry, parse_local};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8() % 3;
    let rest = input.rest();
    if mode == 0 {
        manifest(rest);
        return;
    }
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    if mode == 1 {
        if let Ok(r) = ImageRef::parse(s) {
            let canonical = r.canonical();
            let again = ImageRef::parse(&canonical)
                .unwrap_or_else(|e| panic!("canonical {canonical:?} of {s:?} refused: {e}"));
            assert_eq!(
                again, r,
                "canonical {canonical:?} of {s:?} parses differently"
            );
            let _ = (r.to_oci(None), r.to_oci(Some("mirror.invalid:5000")));
            let _ = (r.name(), is_local_registry(r.registry()));
            if let Some(d) = r.digest() {
                let _ = r.with_digest(d);
            }
        }
    } else if let Ok(LocalRef::Named(name)) = parse_local(s) {
        let r = ImageRef::parse(&name)
            .unwrap_or_else(|e| panic!("local name {s:?} became {name:?}, refused: {e}"));
        assert_eq!(r.canonical(), name, "local name {s:?}");
    }
});

fn manifest(bytes: &[u8]) {
    match parse("registry.invalid/fuzz:latest", bytes) {
        Ok(Fetched::Index(index)) => {
            for platform in ["linux/amd64", "linux/arm64", "/", "", "linux"] {
                let _ = select_platform(&index, platform);
            }
            for d in index.manifests() {
                let _ = digest::validate(d.digest().as_ref());
                let _ = d.media_type().to_string();
            }
        }
        Ok(Fetched::Manifest(m)) => {
            let _ = digest::validate(m.config().digest().as_ref());
            for layer in m.layers() {
                let _ = check_layer_media_type(&layer.media_type().to_string());
                let _ = digest::validate(layer.digest().as_ref());
                let _ = layer.size();
            }
        }
        Err(_) => {}
    }
}
