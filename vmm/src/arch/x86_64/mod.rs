//! x86_64 boot state: the guest physical memory layout, the e820 map, page tables and GDT
//! for entering the kernel in 64-bit mode, the Intel MP table, CPUID fix-ups and the
//! registers a vCPU starts with.

pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
