//! The guest's modprobe. The kernel asks for a module by name or alias when a workload uses
//! something not yet loaded (`request_module`: a bridge, a veth pair, a netfilter table or
//! match, /dev/net/tun...) and runs its usermode helper, `/sbin/modprobe -q -- <name>`,
//! which in the guest image is a link to the agent. It looks the name up in the index that
//! guest-image/build.sh writes (`module <name> <files in load order>`, `alias <pattern>
//! <name>`) and loads those modules from the `layers` share with finit_module.
//!
//! Written by hand because kmod's modprobe is a dynamically linked program with its own
//! binary index files, and the guest has neither a libc nor those files: the agent is one
//! static binary, and this index is a few hundred text lines.

use std::collections::HashMap;
use std::path::Path;

/// The on-demand modules and their index: moatd binds the guest image's `modules/`
/// read-only into the pod's `layers` share, so they cost a pod nothing until one is
/// loaded (in the initramfs they would be unpacked into every guest's memory at boot).
pub const ONDEMAND_DIR: &str = "/run/moat/layers/modules";

/// The index: module name -> modules to load in order; aliases, in file order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Index {
    modules: HashMap<String, Vec<String>>,
    aliases: Vec<(String, String)>,
}

/// Module names treat `-` and `_` alike.
fn normal(name: &str) -> String {
    name.replace('-', "_")
}

impl Index {
    /// Parses the index text; lines it does not understand are skipped.
    pub fn parse(text: &str) -> Index {
        let mut ix = Index::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("module"), Some(name)) => {
                    ix.modules
                        .insert(normal(name), words.map(str::to_owned).collect());
                }
                (Some("alias"), Some(pattern)) => {
                    if let Some(module) = words.next() {
                        ix.aliases.push((pattern.to_owned(), normal(module)));
                    }
                }
                _ => {}
            }
        }
        ix
    }

    /// The modules to load, in order, for a request by name or alias.
    pub fn resolve(&self, request: &str) -> Option<&[String]> {
        if let Some(list) = self.modules.get(&normal(request)) {
            return Some(list);
        }
        self.aliases
            .iter()
            .find(|(pattern, _)| glob(pattern.as_bytes(), request.as_bytes()))
            .and_then(|(_, module)| self.modules.get(module))
            .map(Vec::as_slice)
    }
}

/// fnmatch(3) without flags, as modules.alias patterns use it: `*`, `?` and `[...]`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().position(|&c| c == b']') else {
                return false;
            };
            let (class, after) = (&rest[..end], &rest[end + 1..]);
            let Some((&c, tail)) = s.split_first() else {
                return false;
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit && glob(after, tail)
        }
        Some((&c, rest)) => s.first() == Some(&c) && glob(rest, &s[1..]),
    }
}

/// Loads `modules` from `dir` in order; already loaded (EEXIST) is fine.
fn load(dir: &Path, modules: &[String]) -> Result<(), String> {
    for m in modules {
        let path = dir.join(format!("{m}.ko"));
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(format!("load {m}: {e}")),
        }
    }
    Ok(())
}

/// `modprobe [-q] [-b] [--] NAME...`: the kernel's helper call. Returns the exit code.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    let mut quiet = false;
    let mut names = Vec::new();
    let mut options_done = false;
    for a in args {
        match a.as_str() {
            "--" if !options_done => options_done = true,
            "-q" | "--quiet" if !options_done => quiet = true,
            o if o.starts_with('-') && !options_done => {
                // -b (blacklist) and -v are harmless; removal and the rest are not served.
                if !matches!(o, "-b" | "--use-blacklist" | "-v" | "--verbose") {
                    eprintln!("modprobe: option {o} is not supported in a Moat guest");
                    return 1;
                }
            }
            _ => names.push(a),
        }
    }
    let index = Index::parse(
        &std::fs::read_to_string(Path::new(ONDEMAND_DIR).join("index")).unwrap_or_default(),
    );
    let mut rc = 0;
    for name in names {
        let result = match index.resolve(&name) {
            Some(list) => load(Path::new(ONDEMAND_DIR), list),
            None => Err(format!("module {name} not found in the guest image")),
        };
        if let Err(e) = result {
            if !quiet {
                eprintln!("modprobe: {e}");
            }
            rc = 1;
        }
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "# comment\n\
        module bridge stp llc bridge\n\
        module veth veth\n\
        module loop loop\n\
        alias rtnl-link-bridge bridge\n\
        alias rtnl-link-veth veth\n\
        alias block-major-7-* loop\n\
        alias devname:loop-control loop\n\
        alias char-major-10-23[0-9] loop\n\
        garbage line\n";

    #[test]
    fn names_and_aliases_resolve_to_the_load_order() {
        let ix = Index::parse(INDEX);
        let want = ["stp", "llc", "bridge"].map(String::from);
        assert_eq!(ix.resolve("bridge"), Some(&want[..]));
        assert_eq!(ix.resolve("rtnl-link-bridge"), Some(&want[..]));
        assert_eq!(
            ix.resolve("rtnl-link-veth"),
            Some(&["veth".to_string()][..])
        );
        assert_eq!(
            ix.resolve("block-major-7-3"),
            Some(&["loop".to_string()][..])
        );
        assert_eq!(
            ix.resolve("char-major-10-237"),
            Some(&["loop".to_string()][..])
        );
        assert_eq!(ix.resolve("char-major-10-200"), None);
        assert_eq!(ix.resolve("nope"), None);
    }

    #[test]
    fn globs_match_as_fnmatch_does() {
        for (p, s, m) in [
            ("a*c", "abbc", true),
            ("a*c", "abbd", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("x[0-9a]", "x5", true),
            ("x[0-9a]", "xa", true),
            ("x[0-9a]", "xb", false),
            ("*", "", true),
            ("pci:v*d*", "pci:v1d2", true),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), m, "{p} {s}");
        }
    }

    #[test]
    fn unknown_names_and_removals_fail() {
        assert_eq!(
            main(
                ["-q", "--", "surely-not-a-module"]
                    .map(String::from)
                    .into_iter()
            ),
            1
        );
        assert_eq!(main(["-r", "bridge"].map(String::from).into_iter()), 1);
    }
}
