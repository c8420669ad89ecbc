//! The host side of the device: every vsock connection keyed by (local port, peer port), the
//! hybrid-vsock Unix listener (`CONNECT <port>\n`), dialing `<uds_path>_<port>` for guest
//! connections, and the I/O on every host Unix stream.
//!
//! All host sockets are non-blocking and live in the muxer's own epoll set, whose single fd
//! the vring worker watches; `process_host_events` drains it. Packets for the guest are
//! produced on demand (`next_rx_packet`) when the RX queue has a buffer, so host → guest data
//! is read from a host stream only when the guest has both credit and a buffer for it.
//!
//! Level-triggered epoll without busy loops: a stream is watched for `IN` only while it may
//! be read and is not already marked readable, and for `OUT` only while bytes wait for it;
//! a hung-up stream leaves the epoll set at once (HUP cannot be masked).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self as nsock, MsgFlags};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::VsockError;
use super::connection::{Connection, State};
use super::handshake::{MAX_CONNECT_LINE, parse_connect};
use super::packet::{HOST_CID, Header, Op, TYPE_STREAM};

/// Most connections (any state) at once; each buffers at most `CONN_BUF_ALLOC` bytes.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host streams that have not finished their CONNECT line.
pub const MAX_HANDSHAKES: usize = 64;
/// Most RSTs for unknown connections waiting for an RX buffer; more are dropped (the guest
/// times out instead).
pub const MAX_RST_BACKLOG: usize = 256;
/// The largest payload put in one RX packet (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_RX_PAYLOAD: usize = 64 * 1024;
/// Local ports for host-initiated connections start here (out of the way of the well-known
/// ports guests connect to) and wrap before `VMADDR_PORT_ANY` (`u32::MAX`).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug)]
enum RxItem {
    /// A connection with something for the guest (control packet or readable data).
    Conn(ConnKey),
    /// An RST for a packet that belongs to no connection.
    Rst(Header),
}

struct Entry {
    conn: Connection,
    /// `None` once the host side is finished.
    stream: Option<UnixStream>,
    token: u64,
    /// The interest registered in epoll; `None` when the fd is not in the set.
    interest: Option<EventSet>,
    /// In `rx_queue`.
    queued: bool,
    /// The stream may have bytes (or EOF) to read.
    readable: bool,
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connection multiplexer. See the module docs.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Entry>,
    by_token: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    rx_queue: VecDeque<RxItem>,
    rst_backlog: usize,
    next_local_port: u32,
    scratch: Vec<u8>,
}

impl Muxer {
    /// Binds the hybrid-vsock listener at `uds_path` (replacing a stale socket there).
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Muxer, VsockError> {
        remove_stale_socket(uds_path);
        let bind_err = |source| VsockError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(VsockError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(VsockError::Epoll)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            rx_queue: VecDeque::new(),
            rst_backlog: 0,
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0; MAX_RX_PAYLOAD],
        })
    }

    /// The fd that becomes readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    // ----- host events -----

    /// Handles ready host sockets, including those that became ready meanwhile (a few
    /// rounds; the vring worker calls again while the epoll fd stays readable). Never blocks.
    pub fn process_host_events(&mut self) {
        const ROUNDS: usize = 8;
        let mut events = [EpollEvent::new(EventSet::empty(), 0); 64];
        for _ in 0..ROUNDS {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: waiting on host sockets failed");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            for ev in &events[..n] {
                self.dispatch(ev.data(), ev.event_set());
            }
        }
    }

    fn dispatch(&mut self, token: u64, evset: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_all();
        } else if self.handshakes.contains_key(&token) {
            self.on_handshake_event(token);
        } else if let Some(&key) = self.by_token.get(&token) {
            self.on_stream_event(key, evset);
        } else {
            tracing::debug!(token, "vsock: event for a forgotten socket");
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.on_accept(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: accepting a host connection failed");
                    return;
                }
            }
        }
    }

    fn on_accept(&mut self, stream: UnixStream) {
        if self.handshakes.len() >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: too many host connections; refusing one");
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!(error = %e, "vsock: cannot make a host stream non-blocking");
            return;
        }
        let token = self.alloc_token();
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        ) {
            tracing::warn!(error = %e, "vsock: cannot watch a host stream");
            return;
        }
        self.handshakes.insert(
            token,
            Handshake {
                stream,
                line: Vec::with_capacity(MAX_CONNECT_LINE),
            },
        );
        // The line is often there already.
        self.on_handshake_event(token);
    }

    /// Reads the CONNECT line without consuming a byte past its newline (peek, then read).
    fn on_handshake_event(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let room = MAX_CONNECT_LINE - hs.line.len();
        let peeked = match nsock::recv(hs.stream.as_raw_fd(), &mut buf[..room], MsgFlags::MSG_PEEK)
        {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return,
            Err(e) => {
                tracing::debug!(error = %e, "vsock: host stream failed before CONNECT");
                self.drop_handshake(token);
                return;
            }
        };
        if peeked == 0 {
            tracing::debug!("vsock: host stream closed before CONNECT");
            self.drop_handshake(token);
            return;
        }
        let take = buf[..peeked]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(peeked, |i| i + 1);
        let got = match hs.stream.read(&mut buf[..take]) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "vsock: host stream failed before CONNECT");
                self.drop_handshake(token);
                return;
            }
        };
        hs.line.extend_from_slice(&buf[..got]);
        if hs.line.last() != Some(&b'\n') {
            if hs.line.len() >= MAX_CONNECT_LINE {
                tracing::warn!("vsock: refusing a host stream: CONNECT line too long");
                self.drop_handshake(token);
            }
            return;
        }
        match parse_connect(&hs.line) {
            Ok(port) => self.start_host_connection(token, port),
            Err(e) => {
                tracing::warn!(error = %e, "vsock: refusing a host stream");
                self.drop_handshake(token);
            }
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(hs) = self.handshakes.remove(&token) {
            epoll_del(&self.epoll, hs.stream.as_raw_fd());
        }
    }

    fn start_host_connection(&mut self, token: u64, peer_port: u32) {
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::warn_limited!(peer_port, "vsock: too many connections; refusing CONNECT");
            epoll_del(&self.epoll, hs.stream.as_raw_fd());
            return;
        }
        let local_port = self.alloc_local_port();
        let key = ConnKey {
            local_port,
            peer_port,
        };
        tracing::debug!(local_port, peer_port, "vsock: host CONNECT");
        self.by_token.insert(token, key);
        self.conns.insert(
            key,
            Entry {
                conn: Connection::host_initiated(local_port, peer_port),
                stream: Some(hs.stream),
                token,
                interest: Some(EventSet::IN),
                queued: false,
                readable: false,
            },
        );
        self.sync(key);
    }

    fn on_stream_event(&mut self, key: ConnKey, evset: EventSet) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if evset.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // The peer closed both directions (or the socket failed): nothing more can be
            // written; what it wrote before can still be read, up to EOF.
            e.conn.on_host_write_closed();
            e.readable = true;
            if let Some(stream) = &e.stream {
                let fd = stream.as_raw_fd();
                if e.interest.take().is_some() {
                    epoll_del(&self.epoll, fd);
                }
            }
        }
        if evset.contains(EventSet::IN) {
            e.readable = true;
        }
        // OUT: `sync` flushes.
        self.sync(key);
    }

    /// Brings the host stream of `key` in line with its connection: flushes bytes, applies
    /// half-closes, closes a finished stream, queues RX work, updates the epoll interest,
    /// and forgets a closed connection.
    fn sync(&mut self, key: ConnKey) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(stream) = &e.stream {
            flush_to_host(&mut e.conn, stream);
            if e.conn.should_shut_host_write() {
                let _ = stream.shutdown(Shutdown::Write);
                e.conn.host_write_shut_done();
            }
            if e.conn.should_shut_host_read() {
                let _ = stream.shutdown(Shutdown::Read);
                e.conn.host_read_shut_done();
            }
        }
        if e.conn.host_finished()
            && let Some(stream) = e.stream.take()
        {
            if e.interest.take().is_some() {
                epoll_del(&self.epoll, stream.as_raw_fd());
            }
            e.readable = false;
            drop(stream);
        }
        if !e.queued && (e.conn.has_control() || (e.readable && e.conn.wants_host_read())) {
            e.queued = true;
            self.rx_queue.push_back(RxItem::Conn(key));
        }
        if let (Some(stream), Some(current)) = (&e.stream, e.interest) {
            let mut want = EventSet::empty();
            if !e.readable && e.conn.wants_host_read() {
                want |= EventSet::IN;
            }
            if e.conn.has_host_bytes() {
                want |= EventSet::OUT;
            }
            if want != current {
                match self.epoll.ctl(
                    ControlOperation::Modify,
                    stream.as_raw_fd(),
                    EpollEvent::new(want, e.token),
                ) {
                    Ok(()) => e.interest = Some(want),
                    Err(err) => tracing::warn!(error = %err, "vsock: epoll modify failed"),
                }
            }
        }
        if e.conn.state() == State::Closed && !e.queued {
            let token = e.token;
            if let Some(stream) = e.stream.take()
                && e.interest.is_some()
            {
                epoll_del(&self.epoll, stream.as_raw_fd());
            }
            self.conns.remove(&key);
            self.by_token.remove(&token);
            tracing::debug!(key.local_port, key.peer_port, "vsock: connection closed");
        }
    }

    // ----- guest packets -----

    /// Handles a packet the guest sent (TX queue). `payload` is the RW payload.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            crate::warn_limited!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "vsock: dropping a guest packet with wrong addresses"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op() != Some(Op::Rst) {
                self.queue_rst(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(e) = self.conns.get_mut(&key) {
            e.conn.on_guest_packet(hdr, payload);
            self.sync(key);
            return;
        }
        match hdr.op() {
            Some(Op::Request) => self.accept_guest_connection(hdr, key),
            // Never answer an RST (e.g. the guest's answer to our final SHUTDOWN).
            Some(Op::Rst) => {}
            _ => self.queue_rst(hdr),
        }
    }

    /// A malformed packet (bad payload length): resets its connection, if any.
    pub fn on_bad_guest_packet(&mut self, hdr: &Header) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(e) = self.conns.get_mut(&key) {
            e.conn.reset();
            self.sync(key);
        } else if hdr.op() != Some(Op::Rst) && hdr.src_cid == self.guest_cid {
            self.queue_rst(hdr);
        }
    }

    fn accept_guest_connection(&mut self, req: &Header, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::warn_limited!(
                port = req.dst_port,
                "vsock: too many connections; refusing one"
            );
            self.queue_rst(req);
            return;
        }
        let path = port_socket_path(&self.uds_path, req.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e,
                    "vsock: no host listener for a guest connection");
                self.queue_rst(req);
                return;
            }
        };
        let token = self.alloc_token();
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::empty(), token),
        ) {
            tracing::warn!(error = %e, "vsock: cannot watch a host stream");
            self.queue_rst(req);
            return;
        }
        tracing::debug!(
            port = req.dst_port,
            guest_port = req.src_port,
            "vsock: guest connection"
        );
        self.by_token.insert(token, key);
        self.conns.insert(
            key,
            Entry {
                conn: Connection::guest_initiated(req),
                stream: Some(stream),
                token,
                interest: Some(EventSet::empty()),
                queued: false,
                readable: false,
            },
        );
        self.sync(key);
    }

    fn queue_rst(&mut self, to: &Header) {
        if self.rst_backlog >= MAX_RST_BACKLOG {
            crate::warn_limited!("vsock: RST backlog full; dropping one");
            return;
        }
        self.rst_backlog += 1;
        let mut rst = Header::rst_reply_to(to);
        rst.src_cid = HOST_CID;
        rst.dst_cid = self.guest_cid;
        self.rx_queue.push_back(RxItem::Rst(rst));
    }

    // ----- packets to the guest -----

    /// Whether something waits for an RX buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.rx_queue.is_empty()
    }

    /// The next packet for the guest, with at most `room` payload bytes. Returns its header;
    /// the payload is `rx_payload(header.len)`. `None` when nothing can be sent now (every
    /// queued item was tried once).
    pub fn next_rx_packet(&mut self, room: usize) -> Option<Header> {
        let mut tries = self.rx_queue.len();
        while tries > 0 {
            tries -= 1;
            let item = self.rx_queue.pop_front()?;
            let key = match item {
                RxItem::Rst(h) => {
                    self.rst_backlog -= 1;
                    return Some(h);
                }
                RxItem::Conn(key) => key,
            };
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            e.queued = false;
            let pkt = produce(e, self.guest_cid, room, &mut self.scratch);
            self.sync(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// The payload of the packet `next_rx_packet` just returned.
    pub fn rx_payload(&self, len: u32) -> &[u8] {
        &self.scratch[..(len as usize).min(self.scratch.len())]
    }

    /// The guest driver reset (or its queues stopped): connections it knew are void. Host
    /// CONNECTs whose REQUEST was never sent stay queued for the next driver.
    pub fn guest_reset(&mut self) {
        let void: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.guest_knows())
            .map(|(k, _)| *k)
            .collect();
        for key in void {
            if let Some(mut e) = self.conns.remove(&key) {
                self.by_token.remove(&e.token);
                if let Some(stream) = e.stream.take()
                    && e.interest.is_some()
                {
                    epoll_del(&self.epoll, stream.as_raw_fd());
                }
            }
        }
        let conns = &self.conns;
        self.rx_queue.retain(|item| match item {
            RxItem::Conn(key) => conns.contains_key(key),
            RxItem::Rst(_) => false,
        });
        self.rst_backlog = 0;
        if !self.conns.is_empty() {
            tracing::info!(
                pending = self.conns.len(),
                "vsock: guest driver reset; host CONNECTs wait for the next driver"
            );
        }
    }

    // ----- helpers -----

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.conns.keys().any(|k| k.local_port == p) {
                return p;
            }
        }
    }
}

fn epoll_del(epoll: &Epoll, fd: RawFd) {
    if let Err(e) = epoll.ctl(
        ControlOperation::Delete,
        fd,
        EpollEvent::new(EventSet::empty(), 0),
    ) {
        tracing::debug!(error = %e, "vsock: epoll delete failed");
    }
}

/// Produces the next packet of one connection: a control packet, else data read from the
/// host stream within the guest's credit. `None` when it has nothing to send now.
fn produce(e: &mut Entry, guest_cid: u64, room: usize, scratch: &mut [u8]) -> Option<Header> {
    loop {
        let mut hdr = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: e.conn.local_port(),
            dst_port: e.conn.peer_port(),
            type_: TYPE_STREAM,
            ..Header::default()
        };
        if let Some(ctl) = e.conn.take_control() {
            hdr.op = ctl.op as u16;
            hdr.flags = ctl.flags;
            (hdr.buf_alloc, hdr.fwd_cnt) = e.conn.credit_fields();
            return Some(hdr);
        }
        if !(e.readable && e.conn.wants_host_read()) {
            return None;
        }
        let Some(stream) = e.stream.as_mut() else {
            e.readable = false;
            return None;
        };
        let budget = room.min(scratch.len()).min(e.conn.peer_credit() as usize);
        if budget == 0 {
            return None;
        }
        match stream.read(&mut scratch[..budget]) {
            Ok(0) => {
                e.readable = false;
                e.conn.on_host_eof();
            }
            Ok(n) => {
                let n = u32::try_from(n).unwrap_or(0);
                e.conn.on_data_sent(n);
                hdr.op = Op::Rw as u16;
                hdr.len = n;
                (hdr.buf_alloc, hdr.fwd_cnt) = e.conn.credit_fields();
                return Some(hdr);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                e.readable = false;
                return None;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::debug!(error = %err, "vsock: reading a host stream failed");
                e.readable = false;
                e.conn.reset();
            }
        }
    }
}

/// Writes what the connection holds for the host stream, until it would block.
fn flush_to_host(conn: &mut Connection, stream: &UnixStream) {
    while conn.has_host_bytes() {
        // MSG_NOSIGNAL: a vanished reader is an error, not SIGPIPE.
        match nsock::send(
            stream.as_raw_fd(),
            conn.host_bytes(),
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => conn.on_host_written(n),
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(error = %e, "vsock: writing a host stream failed");
                conn.on_host_write_closed();
                return;
            }
        }
    }
}

/// `<uds_path>_<port>`: where host software listens for guest connections to `port`.
pub fn port_socket_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to a Unix stream socket without ever blocking (a full backlog is a failure).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd: OwnedFd = nsock::socket(
        nsock::AddressFamily::Unix,
        nsock::SockType::Stream,
        nsock::SockFlag::SOCK_NONBLOCK | nsock::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = nsock::UnixAddr::new(path)?;
    nsock::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

fn remove_stale_socket(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        remove_stale_socket(&self.uds_path);
    }
}
