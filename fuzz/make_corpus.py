#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

Each seed is a small, valid input in the format the target's doc comment describes: real
SPDY/3 frames with header blocks compressed with the SPDY/3 dictionary (read from
host/src/streaming/spdy/dictionary.rs), an OCI manifest and index, a small tar, a CNI
result, `CONNECT 1024\\n`, and so on. Run it again after changing a target's input format
(it only writes seed-* files; what fuzzing added to a corpus stays).

    python3 fuzz/make_corpus.py
"""

import gzip
import io
import json
import os
import re
import struct
import tarfile
import zlib

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def piece(b):
    """A `u16 LE length, bytes` piece (moat_fuzz::Input::piece)."""
    return u16(len(b)) + b


def chunks(b, n):
    """Pieces of `u8 length, bytes`."""
    out = b""
    for i in range(0, len(b), n):
        c = b[i : i + n]
        out += u8(len(c)) + c
    return out


# ---- SPDY ------------------------------------------------------------------------------


def spdy_dictionary():
    src = open(os.path.join(ROOT, "host/src/streaming/spdy/dictionary.rs")).read()

    def strings(const):
        body = re.search(r"const %s: &\[&str\] = &\[(.*?)\];" % const, src, re.S).group(1)
        return [json.loads(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', body)]

    d = b""
    for w in strings("WORDS"):
        d += struct.pack(">I", len(w)) + w.encode()
    for t in strings("TAIL"):
        d += t.encode()
    assert len(d) == 1423 and zlib.adler32(d) == 0xE3C6A7C2, "SPDY/3 dictionary"
    return d


def header_block(pairs):
    raw = struct.pack(">I", len(pairs))
    for n, v in pairs:
        raw += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
    return raw


def control(kind, flags, payload):
    return struct.pack(">HHI", 0x8003, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream, flags, payload):
    return struct.pack(">II", stream, (flags << 24) | len(payload)) + payload


def spdy():
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, spdy_dictionary())
    blocks = []
    for pairs in [
        [(b"streamtype", b"error"), (b"requestid", b"0")],
        [(b"streamtype", b"stdout"), (b"requestid", b"0")],
        [(b"streamtype", b"data"), (b"port", b"8080"), (b"requestid", b"1")],
    ]:
        raw = header_block(pairs)
        blocks.append((raw, z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH)))

    # node-spdy's SYN_STREAM test vector (see frame.rs).
    node_spdy = bytes.fromhex(
        "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006b32a48"
        "04974d8cfa00000000ffff"
    )
    write("spdy_frame", "node-spdy-syn-stream", u8(0) + node_spdy)
    session = b""
    for i, (_, block) in enumerate(blocks):
        sid = 1 + 2 * i
        session += control(1, 0, struct.pack(">IIBB", sid, 0, 0, 0) + block)
    session += data_frame(1, 0, b"echo hello\n")
    session += data_frame(1, 1, b"")
    session += control(8, 0, struct.pack(">I", 1))
    session += control(4, 0, struct.pack(">I", 1) + struct.pack(">II", (1 << 24) | 7, 65536))
    session += control(6, 0, struct.pack(">I", 1))
    session += control(9, 0, struct.pack(">II", 1, 65536))
    session += control(3, 0, struct.pack(">II", 3, 5))
    session += control(7, 0, struct.pack(">II", 5, 0))
    write("spdy_frame", "session-at-once", u8(0) + session)
    write("spdy_frame", "session-in-7-byte-pieces", u8(7) + session)

    write("spdy_headers", "raw-block", u8(0) + blocks[0][0])
    write("spdy_headers", "raw-block-multi-value", u8(0) + header_block([(b"port", b"80\x0081")]))
    write(
        "spdy_headers",
        "compressed-session",
        u8(1) + b"".join(piece(b) for _, b in blocks),
    )


# ---- WebSocket -------------------------------------------------------------------------


def websocket():
    write("websocket", "stdin-binary", u8(0) + b"\x00echo hello\n")
    write("websocket", "resize-text", u8(1) + b'\x04{"Width":80,"Height":24}')
    write(
        "websocket",
        "resize-stream",
        u8(2) + chunks(b'{"Width":80,"Height":24}\n{"Width":100,"Height":30}\n{"Wid', 9),
    )
    write("websocket", "ports-query", u8(3) + b"ports=8080,9090&x=1&port=53")


# ---- vsock -----------------------------------------------------------------------------

HOST_CID, GUEST_CID = 2, 3
OP = {"request": 1, "response": 2, "rst": 3, "shutdown": 4, "rw": 5, "credit_update": 6,
      "credit_request": 7}


def vsock_hdr(op, src_port, dst_port, length=0, flags=0, buf_alloc=256 * 1024, fwd_cnt=0,
              src_cid=GUEST_CID, dst_cid=HOST_CID, type_=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, type_,
                       OP[op], flags, buf_alloc, fwd_cnt)


def vsock():
    write("vsock_handshake", "connect-line", u8(0) + b"CONNECT 1024\n")
    write("vsock_handshake", "connect-crlf", u8(0) + b"CONNECT 52\r\n")
    write("vsock_handshake", "stream-split", u8(1) + u8(5) + b"CONNE" + u8(8) + b"CT 1024\n"
          + u8(5) + b"hello")
    write("vsock_handshake", "stream-bad", u8(1) + chunks(b"GET / HTTP/1.1\r\n", 4))

    first = vsock_hdr("rw", 5000, 1024, 5)
    pkts = [
        (0x03, vsock_hdr("request", 5000, 1024), b""),
        (0x03 | 0x08, vsock_hdr("rw", 5000, 1024), b"hello"),
        (0x03 | 0x10, vsock_hdr("credit_request", 5000, 1024), b""),
        (0x03, vsock_hdr("rw", 5000, 1024), b" world"),
        (0x03, vsock_hdr("shutdown", 5000, 1024, flags=3), b""),
        (0x03, vsock_hdr("rst", 5000, 1024), b""),
    ]
    body = b"".join(u8(f) + h + piece(p) for f, h, p in pkts)
    write("vsock_packet", "connect-send-close", first + body)
    bad = [
        (0x00, vsock_hdr("request", 6000, 7777, src_cid=9), b""),
        (0x01, vsock_hdr("rw", 6000, 7777, length=4096), b"short"),
        (0x03, vsock_hdr("request", 6000, 1024, type_=2), b""),
        (0x23, vsock_hdr("request", 6001, 1024), b""),
    ]
    write("vsock_packet", "bad-packets", first + b"".join(u8(f) + h + piece(p) for f, h, p in bad))


# ---- virtio-fs -------------------------------------------------------------------------

LOOKUP, GETATTR, SETATTR, READLINK, MKNOD, MKDIR, OPEN, READ, WRITE = 1, 3, 4, 5, 8, 9, 14, 15, 16
OPENDIR, READDIRPLUS, CREATE, GETXATTR, LISTXATTR, RELEASE, STATFS = 27, 44, 35, 22, 23, 18, 17


def fs_req(opcode, node=0, handle=0, room=5, body=b""):
    return u8(opcode) + u8(node) + u8(handle) + u8(room) + piece(body)


def read_in(size=4096, offset=0):
    return u64(0) + u64(offset) + u32(size) + u32(0) + u64(0) + u32(0) + u32(0)


def virtio_fs():
    ro = [
        fs_req(LOOKUP, body=b"file\0"),  # node 1
        fs_req(OPEN, node=1, body=u32(os.O_RDONLY) + u32(0)),  # handle 1
        fs_req(READ, node=1, handle=0x81, body=read_in()),
        fs_req(GETATTR, node=1, body=u32(0) + u32(0) + u64(0)),
        fs_req(LOOKUP, body=b"up\0"),  # node 2: the symlink out
        fs_req(READLINK, node=2),
        fs_req(OPEN, node=2, body=u32(os.O_RDONLY) + u32(0)),
        fs_req(LOOKUP, body=b"..\0"),
        fs_req(OPENDIR, body=u32(0) + u32(0)),  # handle 2 (or 3)
        fs_req(READDIRPLUS, handle=0x82, body=read_in()),
        fs_req(LISTXATTR, node=1, body=u32(4096) + u32(0)),
        fs_req(MKDIR, body=u32(0o755) + u32(0) + b"new\0"),
        fs_req(STATFS),
    ]
    write("virtio_fs", "read-only-tour", u8(0) + b"".join(ro))
    rw = [
        fs_req(CREATE, body=u32(os.O_RDWR) + u32(0o100644) + u32(0) + u32(0) + b"made\0"),
        fs_req(WRITE, node=1, handle=0x81,
               body=u64(0) + u64(0) + u32(5) + u32(0) + u64(0) + u32(0) + u32(0) + b"hello"),
        fs_req(SETATTR, node=1, body=u32(1) + u32(0) + u64(0) * 6 + u32(0) * 3 + u32(0o104755)
               + u32(0) * 4),
        fs_req(MKNOD, body=u32(0o060600) + u32((8 << 8) | 0) + u32(0) + u32(0) + b"disk\0"),
        fs_req(MKNOD, body=u32(0o020000) + u32(0) + u32(0) + u32(0) + b".wh.gone\0"),
        fs_req(MKDIR, body=u32(0o2755) + u32(0) + b"shared\0"),
        fs_req(LOOKUP, body=b"dir\0"),
    ]
    write("virtio_fs", "read-write-tour", u8(1) + b"".join(rw))


# ---- virtqueue -------------------------------------------------------------------------

NEXT, WRITE_ONLY, INDIRECT = 1, 2, 4


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def virtqueue_seed(flags, descs, buffers, heads, size_log2=2, next_avail=0):
    """A 4-entry queue: descriptor table at 0x40, avail at 0x80, used at 0x90; buffers are
    (address, bytes) pairs; the memory image starts at guest address 0."""
    size = 1 << size_log2
    mem = bytearray(0x400)
    for i, d in enumerate(descs):
        mem[0x40 + 16 * i : 0x40 + 16 * (i + 1)] = d
    mem[0x80:0x84] = struct.pack("<HH", 0, (next_avail + len(heads)) & 0xFFFF)
    for i, h in enumerate(heads):
        slot = 0x84 + 2 * ((next_avail + i) % size)
        mem[slot : slot + 2] = struct.pack("<H", h)
    for addr, b in buffers:
        mem[addr : addr + len(b)] = b
    head = u8(flags) + u8(size_log2) + u16(0x40) + u16(0x80) + u16(0x90) + u16(next_avail)
    head += u16(next_avail)
    assert size >= len(heads)
    return head + bytes(mem)


def fuse_request(opcode, unique, nodeid, body):
    return struct.pack("<IIQQIIII", 40 + len(body), opcode, unique, nodeid, 0, 0, 1, 0) + body


def virtqueue():
    lookup = fuse_request(LOOKUP, 7, 1, b"file\0")
    write("virtqueue", "fs-request-reply", virtqueue_seed(
        0, [desc(0x100, len(lookup), NEXT, 1), desc(0x200, 0x100, WRITE_ONLY, 0)],
        [(0x100, lookup)], [0]))
    write("virtqueue", "fs-event-idx", virtqueue_seed(
        4, [desc(0x100, len(lookup), NEXT, 1), desc(0x200, 0x100, WRITE_ONLY, 0)],
        [(0x100, lookup)], [0], next_avail=0xFFFF))
    table = desc(0x100, len(lookup), NEXT, 1) + desc(0x200, 0x100, WRITE_ONLY, 0)
    write("virtqueue", "fs-indirect", virtqueue_seed(
        0, [desc(0x300, len(table), INDIRECT, 0)], [(0x100, lookup), (0x300, table)], [0]))
    pkt = vsock_hdr("request", 5000, 1024)
    write("virtqueue", "vsock-tx", virtqueue_seed(
        1, [desc(0x100, len(pkt), 0, 0)], [(0x100, pkt)], [0]))
    write("virtqueue", "vsock-rx", virtqueue_seed(
        2, [desc(0x200, 0x100, WRITE_ONLY, 0), desc(0x300, 0x40, WRITE_ONLY, 0)], [], [0, 1]))


# ---- images ----------------------------------------------------------------------------

D = "sha256:" + "a" * 64


def images():
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D,
                   "size": 1469},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + "b" * 64, "size": 2479}],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D,
             "size": 610, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + "c" * 64, "size": 610,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    }
    docker_list = dict(index, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")
    write("oci_manifest", "oci-manifest", u8(0) + json.dumps(manifest).encode())
    write("oci_manifest", "oci-index", u8(0) + json.dumps(index).encode())
    write("oci_manifest", "docker-manifest-list", u8(0) + json.dumps(docker_list).encode())
    write("oci_manifest", "ref-short", u8(1) + b"busybox")
    write("oci_manifest", "ref-digest", u8(1) + b"docker.io/library/alpine@" + D.encode())
    write("oci_manifest", "ref-local-registry", u8(1) + b"127.0.0.1:5000/team/app:v1.2")
    write("oci_manifest", "local-id", u8(2) + D.encode())
    write("oci_manifest", "local-name", u8(2) + b"nginx:1.25")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            ti.mode = kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
            for k, v in kw.items():
                setattr(ti, k, v)
            t.addfile(ti, io.BytesIO(data) if data else None)

        add("etc", tarfile.DIRTYPE)
        add("etc/hostname", data=b"layer\n")
        add("etc/link", tarfile.SYMTYPE, linkname="hostname")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/hostname")
        add("etc/.wh.removed")
        add("var/.wh..wh..opq")
        add("dev", tarfile.DIRTYPE)
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("etc/xattr", data=b"x", pax_headers={"SCHILY.xattr.user.moat": "yes"})
        add("up", tarfile.SYMTYPE, linkname="..")
    tar = buf.getvalue()
    # Trailing zero blocks pad a tar to 10 KiB; keep the seed small.
    tar = tar.rstrip(b"\0")
    tar += b"\0" * (-len(tar) % 512) + b"\0" * 1024
    write("layer_tar", "tar", u8(0) + tar)
    write("layer_tar", "tar-gzipped-here", u8(1) + tar)
    write("layer_tar", "gzip-blob", u8(0) + gzip.compress(tar, mtime=0))
    escape = io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w", format=tarfile.GNU_FORMAT) as t:
        ti = tarfile.TarInfo("out")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../host/etc"
        t.addfile(ti)
        ti = tarfile.TarInfo("out/passwd")
        ti.size = 4
        t.addfile(ti, io.BytesIO(b"pwnd"))
    e = escape.getvalue().rstrip(b"\0")
    e += b"\0" * (-len(e) % 512) + b"\0" * 1024
    write("layer_tar", "symlink-escape", u8(0) + e)


# ---- CNI -------------------------------------------------------------------------------


def cni():
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                       {"name": "eth0", "mac": "02:42:ac:11:00:02", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }
    legacy = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                                              "routes": [{"dst": "0.0.0.0/0", "gw": ""}]}}
    error = {"cniVersion": "1.0.0", "code": 7, "msg": "failed", "details": "no IPs left"}
    write("cni_result", "result-1.0.0", u8(0) + json.dumps(result).encode())
    write("cni_result", "result-0.2.0", u8(0) + json.dumps(legacy).encode())
    write("cni_result", "error", u8(0) + json.dumps(error).encode())
    conflist = {
        "cniVersion": "1.0.0",
        "name": "moat",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    conf = {"cniVersion": "0.4.0", "name": "single", "type": "bridge", "disableCheck": "true"}
    write("cni_result", "conflist", u8(1) + json.dumps(conflist).encode())
    write("cni_result", "conf", u8(1) + json.dumps(conf).encode())
    net_dev = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "    lo:       0       0    0    0    0     0          0         0        0       0 "
        "   0    0    0     0       0          0\n"
        "  eth0:   12345     100    1    0    0     0          0         0     6789      50 "
        "   2    0    0     0       0          0\n"
    )
    write("cni_result", "net-dev", u8(2) + net_dev.encode())


# ---- logs, VMM -------------------------------------------------------------------------


def log_chunk(stderr, finish, t, data):
    return u8((1 if stderr else 0) | (2 if finish else 0)) + u64(t) + piece(data)


def misc():
    t = 1_700_000_000_123_456_789
    write("cri_log", "lines", u8(0) + log_chunk(False, False, t, b"hello\nwor")
          + log_chunk(True, False, t + 1, b"oops\n") + log_chunk(False, True, t + 2, b"ld"))
    write("cri_log", "capped-long-line", u8(3) + log_chunk(False, False, t, b"x" * 300 + b"\n")
          + log_chunk(False, False, t, b"short\n"))

    write("vmm_api", "request", u8(0) + b'{"op":"status"}\n')
    write("vmm_api", "mac", u8(1) + b"02:00:00:aa:bb:cc")
    write("vmm_api", "ranges", u8(2) + b"0:65536:65536,70000:1000:10")
    config = {
        "id": "pod-1", "vcpus": 2, "memory_mib": 256, "kernel": "/boot/vmlinux",
        "cmdline": "console=ttyS0", "console_log": "/run/moat/console.log",
        "vsock": {"guest_cid": 3, "uds_path": "/run/moat/vsock.sock"},
        "fs": [{"tag": "layers", "shared_dir": "/var/lib/moat/layers", "read_only": True}],
        "net": {"tap_fd": 3, "mac": "02:00:00:aa:bb:cc"},
    }
    write("vmm_api", "config", u8(3) + json.dumps(config).encode())


if __name__ == "__main__":
    spdy()
    websocket()
    vsock()
    virtio_fs()
    virtqueue()
    images()
    cni()
    misc()
