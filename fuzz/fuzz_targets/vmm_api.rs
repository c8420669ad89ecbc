#![no_main]
//! Untrusted input: the one-JSON-request-per-line protocol of the built-in VMM's control
//! socket (`moat_vmm::api::parse_request`), the VMM's config file as moatd writes it
//! (`moat_vmm::config::VmmConfig`, validated, with `config::parse_mac`), and the id maps of
//! a user-namespaced pod's read-only share (`moat_devices::fs::owners::parse_ranges`, given
//! to `moatd fs-backend`).
//!
//! Input: the first byte picks what the rest is: 0 a control request line, 1 a MAC address,
//! 2 id ranges, 3 a VMM config. Checks besides "no panic": a MAC that parses prints back the
//! same (lowercased), and id ranges print back to text that parses to the same ranges.

use libfuzzer_sys::fuzz_target;
use moat_devices::fs::owners::{format_ranges, parse_ranges};
use moat_fuzz::Input;
use moat_vmm::api::parse_request;
use moat_vmm::config::{VmmConfig, parse_mac};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    let Ok(s) = std::str::from_utf8(input.rest()) else {
        return;
    };
    match mode {
        0 => {
            let _ = parse_request(s);
        }
        1 => {
            if let Some(mac) = parse_mac(s) {
                let back = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                assert_eq!(back, s.to_ascii_lowercase(), "MAC {s:?}");
            }
        }
        2 => {
            if let Ok(ranges) = parse_ranges(s) {
                assert!(ranges.iter().all(|r| r.len > 0));
                let text = format_ranges(&ranges);
                assert_eq!(
                    parse_ranges(&text).as_ref(),
                    Ok(&ranges),
                    "{s:?} -> {text:?}"
                );
            }
        }
        _ => {
            if let Ok(config) = serde_json::from_str::<VmmConfig>(s)
                && config.validate().is_ok()
            {
                let _ = config.console_log_caps();
            }
        }
    }
});
