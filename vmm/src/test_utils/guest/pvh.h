/*
 * The smoke payload's second entry, for loaders that boot an ELF through its PVH note
 * (QEMU's `-kernel` on the microvm and pc machines): XEN_ELFNOTE_PHYS32_ENTRY names
 * pvh_start, entered in 32-bit protected mode with paging off and ebx = the physical
 * address of the hvm_start_info (which holds the command line). The stub maps the first
 * 4 GiB one to one with 2 MiB pages (the payload's own memory, the virtio-mmio window and
 * the APICs), turns on PAE, long mode and paging, loads a GDT with a 64-bit code segment
 * and continues in the same 64-bit code as the ELF entry. Included by smoke.c.
 *
 * The ELF entry stays the 64-bit `_start`, which Moat's VMM uses.
 */

/* The Xen PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h). */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578u
#define HVM_START_CMDLINE_PADDR 24

__asm__(".pushsection .note.Xen, \"a\", @note\n"
        ".balign 4\n"
        ".long 4\n"  /* namesz: "Xen\0" */
        ".long 8\n"  /* descsz: the entry, as a 64-bit value as Linux writes it */
        ".long 18\n" /* XEN_ELFNOTE_PHYS32_ENTRY */
        ".asciz \"Xen\"\n"
        ".balign 4\n"
        ".quad pvh_start\n"
        ".balign 4\n"
        ".popsection\n"

        /* Page tables (PML4, PDPT, four page directories) and the GDT. */
        ".pushsection .bss\n"
        ".balign 4096\n"
        "pvh_pml4: .skip 4096\n"
        "pvh_pdpt: .skip 4096\n"
        "pvh_pd: .skip 4 * 4096\n"
        ".popsection\n"
        ".pushsection .rodata\n"
        ".balign 8\n"
        "pvh_gdt:\n"
        "    .quad 0\n"
        "    .quad 0x00af9a000000ffff\n" /* 0x08: 64-bit code */
        "    .quad 0x00cf92000000ffff\n" /* 0x10: data */
        "pvh_gdt_end:\n"
        "pvh_gdt_ptr:\n"
        "    .word pvh_gdt_end - pvh_gdt - 1\n"
        "    .long pvh_gdt\n"
        ".popsection\n"

        ".pushsection .text.pvh, \"ax\"\n"
        ".code32\n"
        ".global pvh_start\n"
        "pvh_start:\n"
        "    cli\n"
        "    cld\n"
        "    mov %ebx, %esi\n" /* start_info, kept in esi */
        /* Clear the tables. */
        "    mov $pvh_pml4, %edi\n"
        "    xor %eax, %eax\n"
        "    mov $(6 * 4096 / 4), %ecx\n"
        "    rep stosl\n"
        /* PML4[0] -> PDPT; PDPT[0..3] -> the page directories. */
        "    movl $(pvh_pdpt + 3), pvh_pml4\n"
        "    mov $pvh_pdpt, %edi\n"
        "    mov $(pvh_pd + 3), %eax\n"
        "    mov $4, %ecx\n"
        "1:  mov %eax, (%edi)\n"
        "    add $4096, %eax\n"
        "    add $8, %edi\n"
        "    loop 1b\n"
        /* 2048 2 MiB pages: present, writable, large. */
        "    mov $pvh_pd, %edi\n"
        "    mov $0x83, %eax\n"
        "    mov $2048, %ecx\n"
        "2:  mov %eax, (%edi)\n"
        "    add $0x200000, %eax\n"
        "    add $8, %edi\n"
        "    loop 2b\n"
        /* PAE, the tables, EFER.LME, then paging: long mode (compatibility). */
        "    mov %cr4, %eax\n"
        "    or $0x20, %eax\n"
        "    mov %eax, %cr4\n"
        "    mov $pvh_pml4, %eax\n"
        "    mov %eax, %cr3\n"
        "    mov $0xc0000080, %ecx\n"
        "    rdmsr\n"
        "    or $0x100, %eax\n"
        "    wrmsr\n"
        "    mov %cr0, %eax\n"
        "    or $0x80000001, %eax\n"
        "    mov %eax, %cr0\n"
        /* A 64-bit code segment: into 64-bit mode. */
        "    lgdt pvh_gdt_ptr\n"
        "    ljmp $0x08, $pvh_long\n"
        ".code64\n"
        "pvh_long:\n"
        "    mov $0x10, %eax\n"
        "    mov %eax, %ds\n"
        "    mov %eax, %es\n"
        "    mov %eax, %ss\n"
        "    mov %eax, %fs\n"
        "    mov %eax, %gs\n"
        "    lea stack_top(%rip), %rsp\n"
        "    mov %esi, %edi\n"
        "    call smoke_main_pvh\n"
        "3:  hlt\n"
        "    jmp 3b\n"
        ".popsection\n");

/* The PVH entry's C side: the command line from the hvm_start_info at `start_info`. */
void smoke_main_pvh(u64 start_info) {
    const char *cmdline = "";
    if (*(volatile u32 *)start_info != HVM_START_MAGIC) {
        serial_puts("moat-smoke: PVH start_info has a bad magic\n");
    } else {
        u64 paddr = *(volatile u64 *)(start_info + HVM_START_CMDLINE_PADDR);
        if (paddr != 0) {
            cmdline = (const char *)paddr;
        }
    }
    smoke_run(cmdline);
}
