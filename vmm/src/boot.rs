//! Loading what the guest boots: the kernel (an ELF vmlinux, entered at its 64-bit entry, or
//! a bzImage, entered at its 64-bit entry `code32_start + 0x200`), the initramfs (at the top
//! of low memory), the command line, and boot_params (the zero page) with the e820 map.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::x86_64::e820::e820_map;
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START, MMIO_GAP_START, VIRTIO_MMIO_SIZE,
    ZERO_PAGE_START,
};

/// Boot protocol magic values.
const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448;
const LOADER_UNDEFINED: u8 = 0xff;
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The 64-bit entry of a bzImage, past its 32-bit one.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// The initramfs is placed on a page boundary.
const INITRAMFS_ALIGN: u64 = 0x1000;

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        /// `kernel` or `initramfs`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error(
        "kernel {}: not a loadable ELF vmlinux ({elf}) nor bzImage ({bzimage}); give an \
         x86_64 vmlinux or bzImage",
        path.display()
    )]
    Kernel {
        /// The file.
        path: PathBuf,
        /// The ELF loader's complaint.
        elf: loader::Error,
        /// The bzImage loader's complaint.
        bzimage: loader::Error,
    },
    /// The initramfs does not fit between the kernel and the top of low memory.
    #[error(
        "initramfs of {size} bytes does not fit above the kernel (ends at {kernel_end:#x}) \
         below {top:#x}; give the VM more memory"
    )]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
        /// The end of the kernel.
        kernel_end: u64,
        /// The top of low memory.
        top: u64,
    },
    /// The initramfs could not be copied into guest memory.
    #[error("copying the initramfs into guest memory: {0}")]
    InitramfsCopy(#[source] vm_memory::GuestMemoryError),
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing the command line or boot_params to guest memory failed.
    #[error("writing boot data to guest memory: {0}")]
    Write(String),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the vCPU starts (64-bit mode).
    pub entry: u64,
    /// The end of the kernel image.
    pub end: u64,
    /// The bzImage's setup header, for boot_params; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
}

/// Loads the kernel at `path`: as an ELF vmlinux if it is one, else as a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let read_err = |source| BootError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let himem = Some(GuestAddress(HIGH_MEMORY_START));
    let elf_err = match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => {
            return Ok(LoadedKernel {
                entry: r.kernel_load.raw_value(),
                end: r.kernel_end,
                setup_header: None,
            });
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(r) => Ok(LoadedKernel {
            entry: r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: r.kernel_end,
            setup_header: r.setup_header,
        }),
        Err(bzimage) => Err(BootError::Kernel {
            path: path.to_owned(),
            elf: elf_err,
            bzimage,
        }),
    }
}

/// The end of the lowest memory region (where the initramfs goes below).
fn low_memory_top(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .next()
        .map_or(0, |r| r.start_addr().raw_value() + r.len())
        .min(MMIO_GAP_START)
}

/// Copies the initramfs at `path` to the top of low memory, page-aligned, above
/// `kernel_end`; returns its (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let read_err = |source| BootError::Read {
        what: "initramfs",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let top = low_memory_top(mem);
    let too_large = BootError::InitramfsTooLarge {
        size,
        kernel_end,
        top,
    };
    let Some(addr) = top.checked_sub(size).map(|a| a & !(INITRAMFS_ALIGN - 1)) else {
        return Err(too_large);
    };
    if addr < kernel_end {
        return Err(too_large);
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(BootError::InitramfsCopy)?;
    Ok((addr, size))
}

/// The command line: `base`, then `virtio_mmio.device=4K@0x<addr>:<irq>` for each device (before
/// any `--` init arguments). `capacity` counts the terminating NUL.
pub fn build_cmdline(
    base: &str,
    devices: &[(u64, u32)],
    capacity: usize,
) -> Result<Cmdline, BootError> {
    let err = |e: linux_loader::cmdline::Error| BootError::Cmdline(e.to_string());
    let mut cmdline = if base.trim().is_empty() {
        Cmdline::new(capacity).map_err(err)?
    } else {
        Cmdline::try_from(base, capacity).map_err(err)?
    };
    for &(addr, irq) in devices {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(addr), irq, None)
            .map_err(err)?;
    }
    Ok(cmdline)
}

/// The largest command line (with its NUL) `kernel` accepts.
pub fn cmdline_capacity(kernel: &LoadedKernel) -> usize {
    match kernel.setup_header {
        // cmdline_size exists from boot protocol 2.06 and excludes the NUL.
        Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => h.cmdline_size as usize + 1,
        _ => CMDLINE_MAX_SIZE,
    }
}

/// Writes `cmdline` at `CMDLINE_START`; returns its length with the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, BootError> {
    let len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Write(e.to_string()))?;
    Ok(len)
}

/// The boot_params for `kernel`, a command line of `cmdline_len` bytes (NUL included), the
/// optional initramfs (address, size) and `mem_size` bytes of RAM.
pub fn boot_params_for(
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    mem_size: u64,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes `params` at `ZERO_PAGE_START`.
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    let bp = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(|e| BootError::Write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem(mib: u64) -> GuestMemoryMmap {
        crate::kvm::memory::create_guest_memory(mib).expect("memory")
    }

    #[test]
    fn cmdline_gets_device_words_before_init_args() {
        let c = build_cmdline(
            "console=ttyS0 reboot=k -- --agent",
            &[(0xd000_0000, 5), (0xd000_1000, 6)],
            2048,
        )
        .expect("cmdline");
        assert_eq!(
            c.as_cstring().expect("cstring").to_str().expect("utf8"),
            "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 -- --agent"
        );
        assert!(build_cmdline("", &[], 16).is_ok());
        assert!(matches!(
            build_cmdline(&"x".repeat(100), &[], 50),
            Err(BootError::Cmdline(_))
        ));
    }

    #[test]
    fn boot_params_carry_cmdline_initramfs_and_e820() {
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let p = boot_params_for(&kernel, 42, Some((0x7f0_0000, 0x1234)), 128 << 20);
        let m = mem(128);
        write_boot_params(&m, &p).expect("write");
        let back: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).expect("read");
        let hdr = back.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x7f0_0000, 0x1234)
        );
        assert_eq!({ back.e820_entries }, 2);
        let e1 = back.e820_table[1];
        assert_eq!(
            ({ e1.addr }, { e1.size }, { e1.r#type }),
            (0x10_0000, (127 << 20), 1)
        );
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![7u8; 5000]).expect("write");
        let m = mem(64);
        let (addr, size) = load_initramfs(&m, &path, 0x200_0000).expect("load");
        assert_eq!(size, 5000);
        assert_eq!(addr % 0x1000, 0);
        assert!(addr + size <= 64 << 20 && addr + size + 0x1000 > 64 << 20);
        let b: u8 = m.read_obj(GuestAddress(addr + 4999)).expect("read");
        assert_eq!(b, 7);
        assert!(matches!(
            load_initramfs(&m, &path, (64 << 20) - 0x1000),
            Err(BootError::InitramfsTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_neither_elf_nor_bzimage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        std::fs::write(&path, vec![0u8; 4096]).expect("write");
        let e = load_kernel(&mem(64), &path).expect_err("not a kernel");
        assert!(e.to_string().contains("not a loadable ELF"), "{e}");
    }
}
