//! Owners of a read-only share as a pod with a user namespace sees them.
//!
//! A pod with a user namespace (CRI NamespaceMode POD for users) runs its containers with
//! ids shifted: container uid X is uid `host_id + (X - container_id)` in the guest VM. Image
//! layers on the host keep the image's own owners (root is 0), so inside the namespace
//! every file of the image would belong to the unmapped "nobody", and container root could
//! not change the files its image gives it. The guest's 6.1 kernel cannot idmap a
//! virtio-fs (or tmpfs) mount, so the back-end of the pod's `layers` share does it:
//! attributes it returns (lookup, getattr, readdirplus) carry the owner shifted by the
//! pod's mappings, and an `access` check from a shifted caller is made as the caller's
//! unshifted id. Owners outside the mappings are left alone (the guest shows them as
//! unmapped). Only for read-only shares: nothing is ever written with a shifted owner.
//!
//! Not shifted: ids inside xattrs (POSIX ACLs, v3 file capabilities' root id).

use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::Context;

/// `len` ids from `inside` (the container's view) are `outside`... in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The first id inside the namespace (CRI container_id).
    pub inside: u32,
    /// The id it is in the guest (CRI host_id).
    pub outside: u32,
    /// How many ids (CRI length).
    pub len: u32,
}

impl IdRange {
    /// `id` shifted out, if this range holds it.
    fn shift_out(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.inside)?;
        (off < self.len)
            .then(|| self.outside.checked_add(off))
            .flatten()
    }

    /// `id` shifted back in, if this range's outside holds it.
    fn shift_in(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.outside)?;
        (off < self.len)
            .then(|| self.inside.checked_add(off))
            .flatten()
    }
}

/// Parses `inside:outside:len[,inside:outside:len...]`.
pub fn parse_ranges(s: &str) -> Result<Vec<IdRange>, String> {
    s.split(',')
        .map(|r| {
            let n: Vec<u32> = r
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("id range {r:?}: {e}"))?;
            match n[..] {
                [inside, outside, len] if len > 0 => Ok(IdRange {
                    inside,
                    outside,
                    len,
                }),
                _ => Err(format!(
                    "id range {r:?}: want inside:outside:length, length above 0"
                )),
            }
        })
        .collect()
}

/// Writes `ranges` as `parse_ranges` reads them.
pub fn format_ranges(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{}:{}:{}", r.inside, r.outside, r.len))
        .collect::<Vec<_>>()
        .join(",")
}

/// A pod's uid and gid mappings, applied to the owners a share reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owners {
    /// The uid mappings.
    pub uids: Vec<IdRange>,
    /// The gid mappings.
    pub gids: Vec<IdRange>,
}

fn out(ranges: &[IdRange], id: u32) -> u32 {
    ranges.iter().find_map(|r| r.shift_out(id)).unwrap_or(id)
}

fn back(ranges: &[IdRange], id: u32) -> u32 {
    ranges.iter().find_map(|r| r.shift_in(id)).unwrap_or(id)
}

impl Owners {
    /// Shifts the owner of `st` out, as the guest must see it.
    pub fn shift(&self, st: &mut stat64) {
        st.st_uid = out(&self.uids, st.st_uid);
        st.st_gid = out(&self.gids, st.st_gid);
    }

    /// The caller `ctx` as the host's files know it (its ids shifted back in).
    pub fn caller(&self, ctx: &Context) -> Context {
        let mut c = *ctx;
        c.uid = back(&self.uids, ctx.uid);
        c.gid = back(&self.gids, ctx.gid);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print_back() {
        let r = parse_ranges("0:65536:65536,70000:1000:10").expect("ok");
        assert_eq!(
            r,
            vec![
                IdRange {
                    inside: 0,
                    outside: 65536,
                    len: 65536
                },
                IdRange {
                    inside: 70000,
                    outside: 1000,
                    len: 10
                }
            ]
        );
        assert_eq!(format_ranges(&r), "0:65536:65536,70000:1000:10");
        for bad in ["", "0:1", "0:1:0", "a:b:c", "0:1:2:3", "0:1:4294967296"] {
            assert!(parse_ranges(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owners_shift_out_inside_the_mappings_only_and_callers_back() {
        let o = Owners {
            uids: parse_ranges("0:65536:65536").expect("u"),
            gids: parse_ranges("0:131072:100").expect("g"),
        };
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_uid = 0;
        st.st_gid = 5;
        o.shift(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (65536, 131077));
        st.st_uid = 65535;
        st.st_gid = 100; // outside the gid mapping: left alone
        o.shift(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (131071, 100));
        // An overflowing range shifts nothing past u32.
        let edge = Owners {
            uids: vec![IdRange {
                inside: 0,
                outside: u32::MAX,
                len: 2,
            }],
            gids: vec![],
        };
        st.st_uid = 1;
        edge.shift(&mut st);
        assert_eq!(st.st_uid, 1);

        let ctx = Context {
            uid: 65536 + 33,
            gid: 131072,
            pid: 7,
        };
        let c = o.caller(&ctx);
        assert_eq!((c.uid, c.gid, c.pid), (33, 0, 7));
        let stranger = Context {
            uid: 5,
            gid: 5,
            pid: 1,
        };
        assert_eq!(o.caller(&stranger).uid, 5);
    }
}
