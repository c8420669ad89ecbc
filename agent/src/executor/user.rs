//! Resolving an image config's `user` (`name`, `uid`, `name:group`, `uid:gid`...) against
//! the image's /etc/passwd and /etc/group.

use std::path::Path;

use super::error::{Error, Result};
use super::plan::secure_join;

/// A resolved user: what goes into the spec's `process.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplementary groups: those of /etc/group that list the user, without the primary.
    pub additional_gids: Vec<u32>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Group {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read_in_root(rootfs: &Path, path: &str) -> String {
    secure_join(rootfs, Path::new(path), &[])
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// Resolves `spec` (`user`, `user:group`, each a name or a number) with the image's
/// /etc/passwd and /etc/group (read inside `rootfs`, symlinks kept inside it), as Docker
/// does: a numeric user not in /etc/passwd gets gid 0; a user name or group name not in the
/// files is an error; without a group, the user's primary group from /etc/passwd; the
/// supplementary groups are those listing the user by name. An empty spec is root.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser> {
    let fail = |reason: String| Error::User {
        spec: spec.to_string(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = parse_passwd(&read_in_root(rootfs, "/etc/passwd"));
    let groups = parse_group(&read_in_root(rootfs, "/etc/group"));
    let entry = if user.is_empty() {
        passwd.iter().find(|p| p.uid == 0)
    } else if let Ok(uid) = user.parse::<u32>() {
        passwd.iter().find(|p| p.uid == uid)
    } else {
        Some(
            passwd
                .iter()
                .find(|p| p.name == user)
                .ok_or_else(|| fail(format!("no user {user:?} in /etc/passwd")))?,
        )
    };
    let uid = match (entry, user.parse::<u32>()) {
        (Some(e), _) => e.uid,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => 0, // empty spec without a root entry
    };
    let gid = match group {
        Some("") => return Err(fail("empty group".into())),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|gr| gr.name == g)
                .map(|gr| gr.gid)
                .ok_or_else(|| fail(format!("no group {g:?} in /etc/group")))?,
        },
        None => entry.map_or(0, |e| e.gid),
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = entry {
        for g in &groups {
            if g.members.contains(&e.name) && g.gid != gid && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nnobody:x:65534:65534::/:/sbin/nologin\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root,app\naudio:x:29:app\napp:x:1000:app\nnogroup:x:65534:\n",
        )
        .expect("group");
        dir
    }

    fn r(uid: u32, gid: u32, extra: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        }
    }

    #[test]
    fn names_and_numbers_resolve_like_docker() {
        let dir = rootfs();
        let root = dir.path();
        assert_eq!(resolve_user(root, "").expect("root"), r(0, 0, &[10]));
        assert_eq!(
            resolve_user(root, "app").expect("app"),
            r(1000, 1000, &[10, 29])
        );
        assert_eq!(
            resolve_user(root, "1000").expect("1000"),
            r(1000, 1000, &[10, 29])
        );
        assert_eq!(
            resolve_user(root, "app:audio").expect("app:audio"),
            r(1000, 29, &[10, 1000])
        );
        assert_eq!(
            resolve_user(root, "app:4242").expect("app:4242"),
            r(1000, 4242, &[10, 29, 1000])
        );
        assert_eq!(resolve_user(root, "4242").expect("4242"), r(4242, 0, &[]));
        assert_eq!(
            resolve_user(root, "4242:4243").expect("4242:4243"),
            r(4242, 4243, &[])
        );
        assert_eq!(
            resolve_user(root, "ghost").expect_err("ghost").to_string(),
            "user ghost: no user \"ghost\" in /etc/passwd"
        );
        assert!(resolve_user(root, "app:ghosts").is_err());
    }

    #[test]
    fn files_are_read_inside_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        // /etc -> /../../../etc must not reach the machine's /etc.
        std::os::unix::fs::symlink("/../../../../etc", dir.path().join("etc")).expect("symlink");
        assert_eq!(
            resolve_user(dir.path(), "root")
                .expect_err("no passwd")
                .to_string(),
            "user root: no user \"root\" in /etc/passwd"
        );
    }
}
