//! What happens on a syscall the filter forbids: the filter's default action is
//! SECCOMP_RET_TRAP, so the kernel skips the syscall and sends the thread SIGSYS with the
//! syscall's number; this handler writes that number to stderr (moatd keeps the VMM's
//! stderr in its log) and ends the process with `BLOCKED_SYSCALL_EXIT`.
//!
//! Why not SECCOMP_RET_KILL_PROCESS: the process would die by SIGSYS with nothing said; the
//! number would only reach the audit log, which most nodes do not collect. The kernel
//! delivers a seccomp SIGSYS even when it is blocked, and rt_sigaction is not allowed once
//! the filter is on, so the handler cannot be swapped out; and a trapped syscall never
//! runs whatever a handler does.
//!
//! The handler runs in signal context: it only formats into a stack buffer, write(2)s and
//! _exit(2)s (both allowed by the filter).

use std::io;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The exit status of a VMM that made a forbidden syscall: 128 + SIGSYS, as a shell shows
/// a death by SIGSYS.
pub const BLOCKED_SYSCALL_EXIT: i32 = 128 + libc::SIGSYS;

/// The start of `siginfo_t` for SIGSYS on x86_64 (`_sigsys` in the kernel's union); the
/// libc crate has no accessor for these fields.
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    _code: libc::c_int,
    _pad: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

/// A fixed buffer written without allocating (signal context).
struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Buf {
            bytes: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < N {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_int(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The line written for a forbidden syscall `nr`.
fn message(nr: i64) -> Buf<320> {
    let mut b = Buf::new();
    b.push(b"moat-vmm: seccomp: syscall ");
    b.push_int(nr);
    b.push(b" is not allowed; the VMM stops (exit status ");
    b.push_int(i64::from(BLOCKED_SYSCALL_EXIT));
    b.push(b"). Its name: `ausyscall x86_64 ");
    b.push_int(nr);
    b.push(b"`. If the VMM needs it, allow it in moat-vmm's jail/seccomp.rs.\n");
    b
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel hands a SIGSYS handler (SA_SIGINFO) a valid siginfo whose
        // union is `_sigsys`, laid out as `SigsysInfo` on x86_64.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let msg = message(nr);
    let bytes = msg.as_bytes();
    // SAFETY: write and _exit are async-signal-safe; the buffer lives on this stack.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(BLOCKED_SYSCALL_EXIT);
    }
}

/// Installs the SIGSYS handler (process-wide). Call before the filter goes on.
pub fn install_handler() -> io::Result<()> {
    let action = SigAction::new(
        SigHandler::SigAction(on_sigsys),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions (see the module docs).
    unsafe { sigaction(Signal::SIGSYS, &action) }
        .map(drop)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_syscall_and_the_exit_status() {
        let m = message(41);
        let text = std::str::from_utf8(m.as_bytes()).expect("ascii");
        assert!(
            text.starts_with("moat-vmm: seccomp: syscall 41 is not allowed"),
            "{text}"
        );
        assert!(text.contains("exit status 159"), "{text}");
        assert!(text.contains("ausyscall x86_64 41"), "{text}");
        assert!(text.ends_with('\n'), "{text}");
        let m = message(-7);
        assert!(
            std::str::from_utf8(m.as_bytes())
                .expect("ascii")
                .contains("syscall -7 ")
        );
    }

    #[test]
    fn the_siginfo_layout_matches_the_kernels() {
        // `_sigsys._syscall` sits at offset 24 in the x86_64 siginfo_t.
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());
    }
}
