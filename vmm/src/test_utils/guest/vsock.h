/*
 * The smoke payload's virtio-vsock driver: the first virtio-mmio device (at 0xd0000000),
 * two split virtqueues (RX, TX) in the payload's own memory, everything polled (interrupts
 * stay off). Included by smoke.c, which provides the types and serial_puts.
 *
 * vsock_echo() answers one host-initiated connection on port 1024: it accepts the
 * REQUEST, prints the first data it receives ("moat-smoke: vsock got: <data>"), sends back
 * "pong: <data>", and returns.
 */

#define VIRTIO_MMIO_BASE 0xd0000000ULL
#define VIRTIO_MAGIC 0x74726976u
#define VIRTIO_ID_VSOCK 19

#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4
#define REG_CONFIG 0x100

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8

#define VRING_DESC_F_WRITE 2
#define QSIZE 8
#define RX_BUF 512
#define RXQ 0
#define TXQ 1

#define VSOCK_PORT 1024
#define HOST_CID 2
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RW 5
#define BUF_ALLOC 65536

/* Polls before giving up (each a `pause`): about a second on hardware; about a minute
 * under kvm_pvm, where each pause traps. The host connects before the guest starts, so
 * only a failure waits this long. */
#define SPIN_LIMIT (1ULL << 24)

struct __attribute__((packed)) vsock_hdr {
    u64 src_cid;
    u64 dst_cid;
    u32 src_port;
    u32 dst_port;
    u32 len;
    u16 type;
    u16 op;
    u32 flags;
    u32 buf_alloc;
    u32 fwd_cnt;
};

struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct vring_avail {
    u16 flags;
    u16 idx;
    u16 ring[QSIZE];
    u16 used_event;
};

struct vring_used_elem {
    u32 id;
    u32 len;
};

struct vring_used {
    u16 flags;
    u16 idx;
    struct vring_used_elem ring[QSIZE];
    u16 avail_event;
};

struct vq {
    struct vring_desc desc[QSIZE] __attribute__((aligned(16)));
    struct vring_avail avail __attribute__((aligned(2)));
    struct vring_used used __attribute__((aligned(4)));
    u16 last_used;
};

static struct vq rxq, txq;
static u8 rx_bufs[QSIZE][RX_BUF] __attribute__((aligned(16)));
static u8 tx_buf[RX_BUF] __attribute__((aligned(16)));

#define barrier() __asm__ volatile("" ::: "memory")

static inline u32 mmio_read(u32 reg) {
    return *(volatile u32 *)(VIRTIO_MMIO_BASE + reg);
}

static inline void mmio_write(u32 reg, u32 value) {
    *(volatile u32 *)(VIRTIO_MMIO_BASE + reg) = value;
}

static inline u16 used_idx(struct vq *q) {
    return *(volatile u16 *)&q->used.idx;
}

static void copy(void *dst, const void *src, u32 n) {
    u8 *d = dst;
    const u8 *s = src;
    while (n--) {
        *d++ = *s++;
    }
}

static void setup_queue(u32 index, struct vq *q) {
    mmio_write(REG_QUEUE_SEL, index);
    mmio_write(REG_QUEUE_NUM, QSIZE);
    u64 desc = (u64)&q->desc, avail = (u64)&q->avail, used = (u64)&q->used;
    mmio_write(REG_QUEUE_DESC_LOW, (u32)desc);
    mmio_write(REG_QUEUE_DESC_HIGH, (u32)(desc >> 32));
    mmio_write(REG_QUEUE_DRIVER_LOW, (u32)avail);
    mmio_write(REG_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
    mmio_write(REG_QUEUE_DEVICE_LOW, (u32)used);
    mmio_write(REG_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
    mmio_write(REG_QUEUE_READY, 1);
}

/* Puts RX buffer `id` (back) in the available ring. */
static void post_rx(u16 id) {
    rxq.desc[id].addr = (u64)rx_bufs[id];
    rxq.desc[id].len = RX_BUF;
    rxq.desc[id].flags = VRING_DESC_F_WRITE;
    rxq.avail.ring[rxq.avail.idx % QSIZE] = id;
    barrier();
    rxq.avail.idx++;
}

static u64 guest_cid;

/* Brings the device to DRIVER_OK with RX buffers posted. Returns 0 on success. */
static int vsock_init(void) {
    if (mmio_read(REG_MAGIC) != VIRTIO_MAGIC || mmio_read(REG_VERSION) != 2 ||
        mmio_read(REG_DEVICE_ID) != VIRTIO_ID_VSOCK) {
        serial_puts("moat-smoke: no virtio-vsock device at 0xd0000000\n");
        return -1;
    }
    mmio_write(REG_STATUS, 0);
    mmio_write(REG_STATUS, STATUS_ACKNOWLEDGE);
    mmio_write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    mmio_write(REG_DEVICE_FEATURES_SEL, 1);
    if (!(mmio_read(REG_DEVICE_FEATURES) & 1)) {
        serial_puts("moat-smoke: device lacks VIRTIO_F_VERSION_1\n");
        return -1;
    }
    /* VERSION_1 only: no event index, no indirect descriptors. */
    mmio_write(REG_DRIVER_FEATURES_SEL, 1);
    mmio_write(REG_DRIVER_FEATURES, 1);
    mmio_write(REG_DRIVER_FEATURES_SEL, 0);
    mmio_write(REG_DRIVER_FEATURES, 0);
    mmio_write(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(mmio_read(REG_STATUS) & STATUS_FEATURES_OK)) {
        serial_puts("moat-smoke: FEATURES_OK refused\n");
        return -1;
    }
    guest_cid = mmio_read(REG_CONFIG) | ((u64)mmio_read(REG_CONFIG + 4) << 32);
    setup_queue(RXQ, &rxq);
    setup_queue(TXQ, &txq);
    for (u16 i = 0; i < QSIZE; i++) {
        post_rx(i);
    }
    mmio_write(REG_STATUS,
               STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    mmio_write(REG_QUEUE_NOTIFY, RXQ);
    return 0;
}

/* Waits for the next RX packet; copies its header and up to `max` payload bytes. Returns
 * the payload length, or -1 on timeout. */
static int vsock_recv(struct vsock_hdr *hdr, u8 *data, u32 max) {
    for (u64 spin = 0; used_idx(&rxq) == rxq.last_used; spin++) {
        if (spin > SPIN_LIMIT) {
            return -1;
        }
        __asm__ volatile("pause");
    }
    barrier();
    struct vring_used_elem e = rxq.used.ring[rxq.last_used % QSIZE];
    rxq.last_used++;
    u8 *buf = rx_bufs[e.id];
    copy(hdr, buf, sizeof(*hdr));
    u32 n = hdr->len < max ? hdr->len : max;
    copy(data, buf + sizeof(*hdr), n);
    post_rx((u16)e.id);
    mmio_write(REG_QUEUE_NOTIFY, RXQ);
    return (int)n;
}

/* Sends one packet and waits until the device has taken it. Returns 0, or -1 on timeout. */
static int vsock_send(u16 op, u32 peer_port, const u8 *data, u32 len, u32 fwd_cnt) {
    struct vsock_hdr hdr = {
        .src_cid = guest_cid,
        .dst_cid = HOST_CID,
        .src_port = VSOCK_PORT,
        .dst_port = peer_port,
        .len = len,
        .type = TYPE_STREAM,
        .op = op,
        .flags = 0,
        .buf_alloc = BUF_ALLOC,
        .fwd_cnt = fwd_cnt,
    };
    copy(tx_buf, &hdr, sizeof(hdr));
    copy(tx_buf + sizeof(hdr), data, len);
    txq.desc[0].addr = (u64)tx_buf;
    txq.desc[0].len = sizeof(hdr) + len;
    txq.desc[0].flags = 0;
    txq.avail.ring[txq.avail.idx % QSIZE] = 0;
    barrier();
    txq.avail.idx++;
    mmio_write(REG_QUEUE_NOTIFY, TXQ);
    for (u64 spin = 0; used_idx(&txq) == txq.last_used; spin++) {
        if (spin > SPIN_LIMIT) {
            return -1;
        }
        __asm__ volatile("pause");
    }
    txq.last_used++;
    return 0;
}

static int vsock_echo(void) {
    struct vsock_hdr hdr;
    u8 data[RX_BUF];
    u32 fwd_cnt = 0;
    if (vsock_init() != 0) {
        return -1;
    }
    serial_puts("moat-smoke: vsock ready\n");
    /* The host's REQUEST for our port. */
    do {
        if (vsock_recv(&hdr, data, 0) < 0) {
            serial_puts("moat-smoke: vsock timeout waiting for a connection\n");
            return -1;
        }
    } while (hdr.op != OP_REQUEST || hdr.dst_port != VSOCK_PORT);
    u32 peer = hdr.src_port;
    if (vsock_send(OP_RESPONSE, peer, 0, 0, 0) != 0) {
        return -1;
    }
    /* Its first data. */
    int n;
    do {
        n = vsock_recv(&hdr, data, sizeof(data) - 1);
        if (n < 0) {
            serial_puts("moat-smoke: vsock timeout waiting for data\n");
            return -1;
        }
    } while (hdr.op != OP_RW || hdr.src_port != peer);
    fwd_cnt += hdr.len;
    data[n] = 0;
    serial_puts("moat-smoke: vsock got: ");
    serial_puts((const char *)data);
    serial_puts("\n");
    u8 reply[RX_BUF - sizeof(struct vsock_hdr)];
    const char *prefix = "pong: ";
    u32 len = 0;
    while (prefix[len]) {
        reply[len] = (u8)prefix[len];
        len++;
    }
    for (int i = 0; i < n && len < sizeof(reply); i++) {
        reply[len++] = data[i];
    }
    if (vsock_send(OP_RW, peer, reply, len, fwd_cnt) != 0) {
        return -1;
    }
    serial_puts("moat-smoke: vsock replied\n");
    return 0;
}
