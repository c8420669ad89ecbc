/*
 * The smoke payload: a freestanding 64-bit program a VMM loads like a kernel (an ELF
 * linked at 16 MiB). Two entries:
 *   - the ELF entry `_start`, in long mode with rsi = boot_params (the Linux 64-bit boot
 *     protocol), which Moat's VMM uses; the command line comes from boot_params;
 *   - a PVH entry (see pvh.h), in 32-bit protected mode with ebx = hvm_start_info, which
 *     QEMU uses for `-kernel`; the command line comes from start_info.
 *
 * What it does is chosen by a word on the command line:
 *   (none)        print the greeting, then reset through the i8042 (0xFE to port 0x64),
 *                 or, where that does not end the machine (no i8042), by a triple fault
 *   smoke=spin    print the greeting, then spin forever (the host stops it)
 *   smoke=triple  print the greeting, then triple-fault
 *   smoke=irq     before resetting, take the serial port's interrupt (see irq.h)
 *   smoke=vsock   before resetting, answer one host connection on vsock port 1024
 *                 (see vsock.h), driving the virtio-mmio device at 0xd0000000 (where
 *                 Moat's VMM puts it) by polling
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe
/* boot_params.hdr.cmd_line_ptr (Linux x86 boot protocol). */
#define BP_CMD_LINE_PTR 0x228

static inline void outb(u16 port, u8 value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline u8 inb(u16 port) {
    u8 value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void serial_putc(char c) {
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY)) {
    }
    outb(COM1, (u8)c);
}

static void serial_puts(const char *s) {
    while (*s) {
        serial_putc(*s++);
    }
}

/* Whether the NUL-terminated command line holds the word `word`. */
static int has_word(const char *cmdline, const char *word) {
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ') {
            p++;
        }
        const char *w = word;
        const char *q = p;
        while (*w && *q == *w) {
            q++;
            w++;
        }
        if (!*w && (*q == ' ' || *q == 0)) {
            return 1;
        }
        while (*p && *p != ' ') {
            p++;
        }
    }
    return 0;
}

/*
 * An exception with an empty IDT: #UD cannot be delivered, nor the #GP and #DF that follow,
 * so the CPU shuts down. (A software interrupt such as int3 would do the same on hardware,
 * but kvm_pvm fails to emulate its delivery and reports an internal error instead.)
 */
static void triple_fault(void) {
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } empty = {0, 0};
    __asm__ volatile("lidt %0\n\tud2" : : "m"(empty));
}

#include "irq.h"
#include "vsock.h"

/* Exchanges with host devices, as the command line asks. Returns 0 on success. */
static int run_exchanges(const char *cmdline) {
    if (has_word(cmdline, "smoke=irq") && serial_irq_check() != 0) {
        return -1;
    }
    if (has_word(cmdline, "smoke=vsock")) {
        return vsock_echo();
    }
    return 0;
}

/* What the payload does once in 64-bit mode, whichever entry it came through. */
static void smoke_run(const char *cmdline) {
    serial_puts("moat-smoke: hello\n");
    serial_puts("moat-smoke: cmdline: ");
    serial_puts(cmdline);
    serial_puts("\n");
    if (run_exchanges(cmdline) != 0) {
        serial_puts("moat-smoke: exchange failed\n");
    }
    if (has_word(cmdline, "smoke=spin")) {
        serial_puts("moat-smoke: spinning\n");
        for (;;) {
            __asm__ volatile("pause");
        }
    }
    if (has_word(cmdline, "smoke=triple")) {
        serial_puts("moat-smoke: triple fault\n");
        triple_fault();
    }
    serial_puts("moat-smoke: reset\n");
    for (int i = 0; i < 16; i++) {
        outb(I8042_COMMAND, I8042_RESET);
    }
    /* Still running: the machine has no i8042 (QEMU's microvm), so reset by triple fault. */
    triple_fault();
}

/* The ELF entry's C side: the command line from the boot_params at `boot_params`. */
void smoke_main(u64 boot_params) {
    smoke_run((const char *)(u64)(*(volatile u32 *)(boot_params + BP_CMD_LINE_PTR)));
}

#include "pvh.h"

/* The ELF entry (64-bit, rsi = boot_params): a stack of our own, then smoke_main(rsi). */
__asm__(".section .text.start, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "    lea stack_top(%rip), %rsp\n"
        "    mov %rsi, %rdi\n"
        "    call smoke_main\n"
        "1:  hlt\n"
        "    jmp 1b\n"
        ".section .bss\n"
        ".balign 16\n"
        "stack_bottom:\n"
        "    .skip 16384\n"
        "stack_top:\n"
        ".previous\n");
