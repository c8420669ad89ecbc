//! Localhost seccomp profiles: the JSON file kubelet names by a host path (a Docker-format
//! profile, as containerd and CRI-O read them), turned into the OCI runtime spec's
//! `linux.seccomp`, which the agent compiles to BPF in the guest.
//!
//! The Docker format is the OCI one plus a few conveniences, resolved here against the
//! container: `name` beside `names`, `archMap` for `architectures`, and per-rule `includes`
//! / `excludes` on capabilities and architectures (`minKernel` is taken as met: the guest
//! kernel is Moat's own, 6.x). The result is checked by parsing it as an OCI
//! `LinuxSeccomp`, so a profile with an unknown action or operator is refused here, with the
//! file's name, not later in the guest.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::spec::SpecError;

/// The largest profile file read (Docker's default profile is about 20 KiB).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Vec<String>,
    arch_map: Vec<ArchMap>,
    flags: Vec<String>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ArchMap {
    architecture: String,
    sub_architectures: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Rule {
    name: String,
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    args: Vec<Value>,
    includes: Filter,
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Filter {
    caps: Vec<String>,
    arches: Vec<String>,
}

/// Architecture names that mean this host's (x86_64) in `includes`/`excludes`.
const NATIVE_ARCHES: &[&str] = &["amd64", "x86_64", "SCMP_ARCH_X86_64"];

fn has_cap(caps: &[String], c: &str) -> bool {
    let full = if c.starts_with("CAP_") {
        c.to_owned()
    } else {
        format!("CAP_{c}")
    };
    caps.contains(&full)
}

fn applies(r: &Rule, caps: &[String]) -> bool {
    let native = |arches: &[String]| arches.iter().any(|a| NATIVE_ARCHES.contains(&a.as_str()));
    let included = r.includes.caps.iter().all(|c| has_cap(caps, c))
        && (r.includes.arches.is_empty() || native(&r.includes.arches));
    let excluded = r.excludes.caps.iter().any(|c| has_cap(caps, c)) || native(&r.excludes.arches);
    included && !excluded
}

/// The OCI `linux.seccomp` of the profile at `path` for a container with capabilities
/// `caps` (`CAP_*` names).
pub fn load_localhost(path: &Path, caps: &[String]) -> Result<Value, SpecError> {
    let what = || format!("Localhost seccomp profile {}", path.display());
    if !path.is_absolute() {
        return Err(SpecError(format!(
            "{}: the profile must be an absolute path on the node",
            what()
        )));
    }
    let meta = std::fs::metadata(path).map_err(|e| SpecError(format!("{}: {e}", what())))?;
    if !meta.is_file() || meta.len() > MAX_PROFILE_BYTES {
        return Err(SpecError(format!(
            "{}: not a regular file of at most {MAX_PROFILE_BYTES} bytes",
            what()
        )));
    }
    let text = std::fs::read(path).map_err(|e| SpecError(format!("{}: {e}", what())))?;
    let p: Profile = serde_json::from_slice(&text)
        .map_err(|e| SpecError(format!("{}: not a seccomp profile: {e}", what())))?;
    if p.default_action.is_empty() {
        return Err(SpecError(format!("{}: defaultAction is missing", what())));
    }
    let mut architectures = p.architectures.clone();
    for m in &p.arch_map {
        architectures.push(m.architecture.clone());
        architectures.extend(m.sub_architectures.iter().cloned());
    }
    let syscalls: Vec<Value> = p
        .syscalls
        .iter()
        .filter(|r| applies(r, caps))
        .map(|r| {
            let mut names = r.names.clone();
            if !r.name.is_empty() {
                names.push(r.name.clone());
            }
            let mut rule = json!({"names": names, "action": r.action, "args": r.args});
            if let Some(e) = r.errno_ret {
                rule["errnoRet"] = json!(e);
            }
            rule
        })
        .filter(|r| r["names"].as_array().is_some_and(|n| !n.is_empty()))
        .collect();
    let mut out = json!({
        "defaultAction": p.default_action,
        "architectures": architectures,
        "flags": p.flags,
        "syscalls": syscalls,
    });
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(out.clone())
        .map_err(|e| SpecError(format!("{}: {e}", what())))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), text).expect("w");
        f
    }

    #[test]
    fn a_docker_profile_becomes_the_oci_section_for_this_container() {
        let f = write(
            r#"{
              "defaultAction": "SCMP_ACT_ALLOW",
              "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
              "syscalls": [
                {"names": ["sethostname", "setdomainname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"name": "chroot", "action": "SCMP_ACT_ERRNO"},
                {"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_BOOT"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
                {"names": ["uselib"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["s390x"]}}
              ]
            }"#,
        );
        let caps = vec!["CAP_SYS_BOOT".to_string()];
        let v = load_localhost(f.path(), &caps).expect("load");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            v["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        let names: Vec<String> = v["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|r| r["names"].as_array().cloned().unwrap_or_default())
            .map(|n| n.as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(names, vec!["sethostname", "setdomainname", "chroot"]);
        assert_eq!(v["syscalls"][0]["errnoRet"], 1);
    }

    #[test]
    fn bad_profiles_are_refused_with_the_files_name() {
        let relative = load_localhost(Path::new("profile.json"), &[]).expect_err("relative");
        assert!(relative.0.contains("absolute"), "{relative}");
        let missing = load_localhost(Path::new("/nonexistent/p.json"), &[]).expect_err("missing");
        assert!(missing.0.contains("/nonexistent/p.json"), "{missing}");
        for text in [
            "not json",
            "{}",
            r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#,
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_WHATEVER"}]}]}"#,
        ] {
            let f = write(text);
            assert!(load_localhost(f.path(), &[]).is_err(), "{text}");
        }
    }
}
