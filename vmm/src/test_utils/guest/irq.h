/*
 * The smoke payload's interrupt check: the serial port's THR-empty interrupt (IRQ 4), raised
 * by the VMM through a KVM irqfd, must arrive through the in-kernel IOAPIC and local APIC
 * at the vector programmed here. Included by smoke.c (types, port I/O, serial_puts).
 */

#define IOAPIC_BASE 0xfec00000ULL
#define LAPIC_BASE 0xfee00000ULL
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define SERIAL_VECTOR 0x24
#define SERIAL_IRQ 4
#define COM1_IER (COM1 + 1)
#define COM1_IIR (COM1 + 2)
#define IER_THR_EMPTY 0x02
/* Polls (each a `pause`) before giving up: the interrupt is due at once. Well under a
 * second on hardware; under kvm_pvm, where each pause traps, about 15 s. */
#define IRQ_SPIN_LIMIT (1ULL << 22)

struct __attribute__((packed)) idt_gate {
    u16 offset_low;
    u16 selector;
    u8 ist;
    u8 type_attr;
    u16 offset_mid;
    u32 offset_high;
    u32 zero;
};

static struct idt_gate idt[256] __attribute__((aligned(16)));
static volatile u32 serial_irqs;

static inline void mmio_write32(u64 addr, u32 value) {
    *(volatile u32 *)addr = value;
}

static void ioapic_write(u32 reg, u32 value) {
    mmio_write32(IOAPIC_BASE, reg);
    mmio_write32(IOAPIC_BASE + 0x10, value);
}

/* Called from the interrupt stub. */
void smoke_irq(void) {
    (void)inb(COM1_IIR);
    serial_irqs++;
    mmio_write32(LAPIC_BASE + LAPIC_EOI, 0);
}

void irq_stub(void);
__asm__(".text\n"
        "irq_stub:\n"
        "    push %rax\n push %rcx\n push %rdx\n push %rsi\n push %rdi\n"
        "    push %r8\n push %r9\n push %r10\n push %r11\n"
        "    call smoke_irq\n"
        "    pop %r11\n pop %r10\n pop %r9\n pop %r8\n"
        "    pop %rdi\n pop %rsi\n pop %rdx\n pop %rcx\n pop %rax\n"
        "    iretq\n");

static int serial_irq_check(void) {
    u64 handler = (u64)irq_stub;
    idt[SERIAL_VECTOR] = (struct idt_gate){
        .offset_low = (u16)handler,
        .selector = 0x08,
        .ist = 0,
        .type_attr = 0x8e, /* present, ring 0, 64-bit interrupt gate */
        .offset_mid = (u16)(handler >> 16),
        .offset_high = (u32)(handler >> 32),
        .zero = 0,
    };
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));

    /* The 8259s masked (as Linux does), so only the IOAPIC delivers. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    /* Local APIC on, accepting every priority; IRQ 4 to vector 0x24 on APIC 0, edge. */
    mmio_write32(LAPIC_BASE + LAPIC_TPR, 0);
    mmio_write32(LAPIC_BASE + LAPIC_SVR, 0x1ff);
    ioapic_write(0x10 + 2 * SERIAL_IRQ + 1, 0);
    ioapic_write(0x10 + 2 * SERIAL_IRQ, SERIAL_VECTOR);

    __asm__ volatile("sti");
    outb(COM1_IER, IER_THR_EMPTY);
    for (u64 spin = 0; serial_irqs == 0; spin++) {
        if (spin > IRQ_SPIN_LIMIT) {
            __asm__ volatile("cli");
            outb(COM1_IER, 0);
            serial_puts("moat-smoke: no serial interrupt\n");
            return -1;
        }
        __asm__ volatile("pause");
    }
    __asm__ volatile("cli");
    outb(COM1_IER, 0);
    serial_puts("moat-smoke: serial interrupt arrived\n");
    return 0;
}
