//! The smoke payload: a tiny freestanding 64-bit guest (guest/smoke.c), compiled with the
//! system toolchain (gcc, ld, objcopy) into an ELF linked at 16 MiB, as a vmlinux is.
//!
//! It has two entries, so one binary boots under both VMMs a benchmark compares: the ELF
//! entry (long mode, rsi = boot_params), which Moat's VMM uses, and a PVH entry (the
//! XEN_ELFNOTE_PHYS32_ENTRY note: 32-bit protected mode, ebx = hvm_start_info), which
//! QEMU's `-kernel` uses. Its kernel command line picks what it does (see smoke.c).
//!
//! Used by the KVM smoke test and the VMM benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = include_str!("guest/smoke.c");
const VSOCK_DRIVER: &str = include_str!("guest/vsock.h");
const IRQ_CHECK: &str = include_str!("guest/irq.h");
const PVH_ENTRY: &str = include_str!("guest/pvh.h");
const LINKER_SCRIPT: &str = include_str!("guest/smoke.ld");

/// Where the ELF is linked, and what the bzImage variant's script says instead.
const ELF_LOAD_ADDRESS: &str = "0x1000000";
/// The bzImage variant is linked at its 64-bit entry: 1 MiB + 0x200.
const BZIMAGE_LOAD_ADDRESS: &str = "0x100200";

/// Flags for a freestanding kernel-like program: no libc, no PIE, no SSE (nothing sets it
/// up), no red zone (interrupts use the stack), no calls to memcpy/memset gcc might invent.
const GCC_FLAGS: &[&str] = &[
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-nostdlib",
    "-static",
    "-O2",
    "-Wall",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,--no-warn-rwx-segments",
];

/// Why the payload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Writing a source file or the image failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A build tool could not be run.
    #[error(
        "running {tool}, needed to build the guest payload: {source}; install it (Debian: gcc, binutils)"
    )]
    Spawn {
        /// gcc or objcopy.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A build tool failed.
    #[error("{tool} failed building the guest payload:\n{stderr}")]
    Failed {
        /// gcc or objcopy.
        tool: &'static str,
        /// What it printed.
        stderr: String,
    },
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), PayloadError> {
    std::fs::write(path, contents).map_err(|source| PayloadError::Write {
        path: path.to_owned(),
        source,
    })
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<(), PayloadError> {
    let out = cmd
        .output()
        .map_err(|source| PayloadError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(PayloadError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Compiles the payload into `dir/<name>` with linker script `script`.
fn compile(dir: &Path, script: &str, name: &str) -> Result<PathBuf, PayloadError> {
    let src = dir.join("smoke.c");
    let script_path = dir.join(format!("{name}.ld"));
    let elf = dir.join(name);
    write(&src, SOURCE)?;
    write(&dir.join("vsock.h"), VSOCK_DRIVER)?;
    write(&dir.join("irq.h"), IRQ_CHECK)?;
    write(&dir.join("pvh.h"), PVH_ENTRY)?;
    write(&script_path, script)?;
    run(
        "gcc",
        Command::new("gcc")
            .args(GCC_FLAGS)
            .arg("-T")
            .arg(&script_path)
            .arg("-o")
            .arg(&elf)
            .arg(&src),
    )?;
    Ok(elf)
}

/// Compiles the payload into `dir` (an ELF linked at 16 MiB, entered at its 64-bit entry,
/// with a PVH note); returns the ELF's path.
pub fn build_elf(dir: &Path) -> Result<PathBuf, PayloadError> {
    compile(dir, LINKER_SCRIPT, "smoke.elf")
}

/// Wraps the payload in a minimal bzImage in `dir`: a boot sector and one setup sector
/// holding the setup header (boot protocol 2.15, loaded high at 1 MiB), then the
/// protected-mode image: 0x200 bytes where the 32-bit entry would be, and the payload
/// linked at its 64-bit entry (1 MiB + 0x200). Returns the bzImage's path.
pub fn build_bzimage(dir: &Path) -> Result<PathBuf, PayloadError> {
    let script = LINKER_SCRIPT.replace(ELF_LOAD_ADDRESS, BZIMAGE_LOAD_ADDRESS);
    debug_assert_ne!(script, LINKER_SCRIPT, "the linker script sets the address");
    let elf = compile(dir, &script, "smoke-bz.elf")?;
    let flat = dir.join("smoke-bz.bin");
    run(
        "objcopy",
        Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&flat),
    )?;
    let body = std::fs::read(&flat).map_err(|source| PayloadError::Write {
        path: flat.clone(),
        source,
    })?;

    let mut image = vec![0u8; 2 * 512];
    let mut put = |at: usize, bytes: &[u8]| image[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x1f1, &[1]); // setup_sects
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes()); // version
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    image.extend_from_slice(&[0xf4; 0x200]); // the 32-bit entry: hlt
    image.extend_from_slice(&body);
    let path = dir.join("bzImage");
    write(&path, image)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::elf::PvhBootCapability;
    use linux_loader::loader::{Elf, KernelLoader};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn the_elf_entry_is_64_bit_and_the_pvh_note_names_the_32_bit_stub() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elf = build_elf(dir.path()).expect("build the payload");
        let mem = crate::kvm::memory::create_guest_memory(64).expect("memory");
        let mut file = std::fs::File::open(&elf).expect("open");
        let r = Elf::load(&mem, None, &mut file, Some(GuestAddress(0x10_0000))).expect("load");
        // The ELF entry: `_start` at the start of .text, its first instruction
        // `lea stack_top(%rip), %rsp` (48 8d 25), 64-bit code.
        assert_eq!(r.kernel_load, GuestAddress(0x100_0000));
        let first: [u8; 3] = mem.read_obj(r.kernel_load).expect("read");
        assert_eq!(first, [0x48, 0x8d, 0x25]);
        let PvhBootCapability::PvhEntryPresent(pvh) = r.pvh_boot_cap else {
            panic!("no PVH note: {:?}", r.pvh_boot_cap);
        };
        assert!(
            pvh.0 > r.kernel_load.0 && pvh.0 < r.kernel_end,
            "PVH entry {pvh:?} inside the image"
        );
        // The stub's first instructions: cli, cld.
        let stub: [u8; 2] = mem.read_obj(pvh).expect("read");
        assert_eq!(stub, [0xfa, 0xfc]);
    }

    #[test]
    fn qemu_boots_it_through_the_pvh_entry_with_the_command_line() {
        let qemu = "qemu-system-x86_64";
        if Command::new(qemu).arg("--version").output().is_err() {
            eprintln!("SKIPPED the PVH boot check: {qemu} is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let elf = build_elf(dir.path()).expect("build the payload");
        let out = Command::new("timeout")
            .arg("60")
            .arg(qemu)
            .args(["-M", "microvm", "-accel", "tcg", "-m", "128M"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio", "-kernel"])
            .arg(&elf)
            .args(["-append", "console=ttyS0 from=pvh"])
            .output()
            .expect("run qemu");
        let console = String::from_utf8_lossy(&out.stdout);
        assert!(
            console.contains("moat-smoke: cmdline: console=ttyS0 from=pvh\n"),
            "console: {console:?}, stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // microvm has no i8042: the payload's triple fault ends QEMU (-no-reboot).
        assert!(console.contains("moat-smoke: reset\n"), "{console:?}");
        assert!(out.status.success(), "qemu: {:?}", out.status);
    }
}
