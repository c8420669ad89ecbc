//! The seam in front of the agent's privileged calls. The real implementation makes the
//! system calls; tests use `Recorder`, which records what would have been done.

use std::path::Path;

/// Privileged operations the agent performs on its guest.
pub trait System: Send + Sync + 'static {
    /// sethostname(2).
    fn set_hostname(&self, name: &str) -> std::io::Result<()>;
    /// Writes a whole file (creating parent directories).
    fn write_file(&self, path: &Path, contents: &[u8]) -> std::io::Result<()>;
    /// clock_settime(CLOCK_REALTIME).
    fn set_clock(&self, unix_nanos: i64) -> std::io::Result<()>;
    /// Powers the machine off (or, off a VM, ends the agent).
    fn power_off(&self);
    /// Mounts the virtio-fs share `tag` at `target`.
    fn mount_virtiofs(&self, tag: &str, target: &Path, read_only: bool) -> std::io::Result<()>;
    /// Sets a sysctl: writes `value` to `/proc/sys/<path>` (`path` already checked by
    /// `sysctl_path`).
    fn set_sysctl(&self, path: &str, value: &str) -> std::io::Result<()>;
    /// lchown(2).
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()>;
    /// Mounts the VM's mqueue filesystem (the IPC namespace's message queues) on `target`,
    /// unless one is there already.
    fn mount_mqueue(&self, target: &Path) -> std::io::Result<()>;
}

pub use moat_proto::sysctl::sysctl_path;

/// The real system, as PID 1 of a guest.
pub struct Linux {
    /// Running as PID 1 of a VM (else: a plain host, where the clock and power are left alone).
    pub guest: bool,
}

impl System for Linux {
    fn set_hostname(&self, name: &str) -> std::io::Result<()> {
        nix::unistd::sethostname(name).map_err(Into::into)
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(path, contents)
    }

    fn set_clock(&self, unix_nanos: i64) -> std::io::Result<()> {
        if !self.guest {
            return Ok(());
        }
        let ts =
            nix::sys::time::TimeSpec::new(unix_nanos / 1_000_000_000, unix_nanos % 1_000_000_000);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(Into::into)
    }

    fn mount_virtiofs(&self, tag: &str, target: &Path, read_only: bool) -> std::io::Result<()> {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(target)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(Some(tag), target, Some("virtiofs"), flags, None::<&str>).map_err(Into::into)
    }

    fn set_sysctl(&self, path: &str, value: &str) -> std::io::Result<()> {
        // O_NOFOLLOW: /proc/sys holds no symlinks; the write is one call, as the kernel wants.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(Path::new("/proc/sys").join(path))?
            .write_all(value.as_bytes())
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn mount_mqueue(&self, target: &Path) -> std::io::Result<()> {
        use nix::mount::{MsFlags, mount};
        use std::os::unix::ffi::OsStrExt;
        const MQUEUE_MAGIC: libc::c_long = 0x1980_0202;
        std::fs::create_dir_all(target)?;
        let c =
            std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: an all-zero statfs is a valid value to be overwritten.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid C string; st a valid out-pointer.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0
            && st.f_type as libc::c_long == MQUEUE_MAGIC
        {
            return Ok(());
        }
        mount(
            Some("mqueue"),
            target,
            Some("mqueue"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(Into::into)
    }

    fn power_off(&self) {
        if self.guest {
            nix::unistd::sync();
            end_vm();
        }
        std::process::exit(0);
    }
}

/// Ends the VM: a reboot, which both VMMs turn into their exit (QEMU runs with `-no-reboot`;
/// Moat's own VMM ends on the i8042 reset of `reboot=k` or the triple fault of `reboot=t`).
/// Not a power-off: without ACPI (the built-in VMM has none) Linux turns a power-off into a
/// halt, and the VM would sit halted forever.
pub fn end_vm() {
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
}

/// A call the agent made, as recorded by `Recorder`.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// set_hostname.
    Hostname(String),
    /// write_file.
    Write(String, String),
    /// set_clock.
    Clock(i64),
    /// power_off.
    PowerOff,
    /// mount_virtiofs.
    MountVirtiofs(String, String, bool),
    /// set_sysctl.
    Sysctl(String, String),
    /// chown.
    Chown(String, u32, u32),
    /// mount_mqueue.
    MountMqueue(String),
}

/// Records calls instead of making them.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    /// What was called, in order.
    pub calls: std::sync::Mutex<Vec<Call>>,
}

#[cfg(test)]
impl Recorder {
    fn push(&self, c: Call) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
}

#[cfg(test)]
impl System for Recorder {
    fn set_hostname(&self, name: &str) -> std::io::Result<()> {
        self.push(Call::Hostname(name.into()));
        Ok(())
    }
    fn write_file(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        self.push(Call::Write(
            path.display().to_string(),
            String::from_utf8_lossy(contents).into(),
        ));
        Ok(())
    }
    fn set_clock(&self, unix_nanos: i64) -> std::io::Result<()> {
        self.push(Call::Clock(unix_nanos));
        Ok(())
    }
    fn power_off(&self) {
        self.push(Call::PowerOff);
    }
    fn mount_virtiofs(&self, tag: &str, target: &Path, read_only: bool) -> std::io::Result<()> {
        self.push(Call::MountVirtiofs(
            tag.into(),
            target.display().to_string(),
            read_only,
        ));
        Ok(())
    }
    fn set_sysctl(&self, path: &str, value: &str) -> std::io::Result<()> {
        self.push(Call::Sysctl(path.into(), value.into()));
        Ok(())
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        self.push(Call::Chown(path.display().to_string(), uid, gid));
        Ok(())
    }
    fn mount_mqueue(&self, target: &Path) -> std::io::Result<()> {
        self.push(Call::MountMqueue(target.display().to_string()));
        Ok(())
    }
}
