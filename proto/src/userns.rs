//! User namespace mappings as SetupSandboxRequest carries them: both sides check them
//! with this one rule (moatd to answer InvalidArgument at RunPodSandbox, the agent before
//! it writes /proc/PID/uid_map and gid_map).

/// The most lines a uid_map or gid_map takes (Linux 4.15 and later).
pub const MAX_EXTENTS: usize = 340;

/// One line of a uid_map or gid_map: `length` ids from `container_id` inside the
/// namespace are `host_id`... outside it (in the VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdMap {
    /// The first id inside the namespace.
    pub container_id: u32,
    /// The id it is outside.
    pub host_id: u32,
    /// How many ids.
    pub length: u32,
}

/// Checks one side (`what`: "uid" or "gid") as the kernel would, and more: non-empty, at
/// most `MAX_EXTENTS` lines of under a page, no empty range, no range past 2^32 - 2, no
/// two ranges overlapping inside or outside.
pub fn check_side(what: &str, maps: &[IdMap]) -> Result<(), String> {
    if maps.is_empty() {
        return Err(format!("no {what} mappings"));
    }
    if maps.len() > MAX_EXTENTS {
        return Err(format!(
            "{} {what} mappings, over the {MAX_EXTENTS} the kernel takes",
            maps.len()
        ));
    }
    for (i, m) in maps.iter().enumerate() {
        if m.length == 0 {
            return Err(format!("{what} mapping {i} has length 0"));
        }
        // The kernel refuses a range that reaches 2^32 - 1 ((uid_t)-1 is never an id).
        for (side, first) in [("container", m.container_id), ("host", m.host_id)] {
            if u64::from(first) + u64::from(m.length) > u64::from(u32::MAX) {
                return Err(format!(
                    "{what} mapping {i}: {side} ids {first} + {} overflow 32 bits",
                    m.length
                ));
            }
        }
    }
    for (side, key) in [
        (
            "container",
            (|m: &IdMap| m.container_id) as fn(&IdMap) -> u32,
        ),
        ("host", |m: &IdMap| m.host_id),
    ] {
        let mut sorted: Vec<(usize, &IdMap)> = maps.iter().enumerate().collect();
        sorted.sort_by_key(|(_, m)| key(m));
        for pair in sorted.windows(2) {
            let ((a, ma), (b, mb)) = (pair[0], pair[1]);
            if u64::from(key(ma)) + u64::from(ma.length) > u64::from(key(mb)) {
                let (a, b) = (a.min(b), a.max(b));
                return Err(format!(
                    "{what} mappings {a} and {b} overlap on the {side} side"
                ));
            }
        }
    }
    if map_text(maps).len() >= 4096 {
        return Err(format!(
            "the {what} mappings take {} bytes as a map file, over the kernel's 4095",
            map_text(maps).len()
        ));
    }
    Ok(())
}

/// The text of a uid_map or gid_map file.
pub fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect()
}

/// The id outside that `id` inside is, if the maps hold it.
pub fn to_host(maps: &[IdMap], id: u32) -> Option<u32> {
    maps.iter().find_map(|m| {
        let off = id.checked_sub(m.container_id)?;
        (off < m.length).then(|| m.host_id + off)
    })
}

/// Checks both sides (`check_side`) and that container uid 0 and gid 0 are mapped (the
/// agent makes every process root of the namespace before it takes the spec's user).
pub fn check(uids: &[IdMap], gids: &[IdMap]) -> Result<(), String> {
    check_side("uid", uids)?;
    check_side("gid", gids)?;
    if to_host(uids, 0).is_none() || to_host(gids, 0).is_none() {
        return Err("container uid 0 and gid 0 must be mapped".into());
    }
    Ok(())
}
