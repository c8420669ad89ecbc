//! One vsock stream connection between the guest and a host Unix stream: its state machine
//! and both directions of credit-based flow control. Pure logic: the muxer does the I/O and
//! reports what happened (`on_guest_packet`, `on_host_written`, `on_host_eof`, ...); this type
//! says what to send to the guest next (`take_control`, `credit_fields`) and what the host
//! stream may do (`wants_host_read`, `host_bytes`, ...).
//!
//! Credit (virtio spec, "Device Operation: Buffer Space Management"): each side advertises
//! `buf_alloc` (its receive buffer for this connection) and `fwd_cnt` (bytes it has consumed
//! from that buffer) in every packet header. A sender may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight. Counters are free-running u32s
//! and wrap.

use std::collections::VecDeque;
use std::num::Wrapping;

use super::packet::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// The receive buffer we advertise per connection (`buf_alloc`): the most guest→host bytes
/// we ever hold for one connection while the host stream is not reading.
pub const CONN_BUF_ALLOC: u32 = 128 * 1024;

/// Connection lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE (or RST).
    Connecting,
    /// Data flows (in whichever directions are not shut down).
    Established,
    /// The final packet (RST, or SHUTDOWN with both flags) is queued; the host stream is done.
    Closing,
    /// Nothing left to do; the muxer forgets the connection.
    Closed,
}

/// A control packet to send to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub op: Op,
    /// SHUTDOWN flags; 0 for other ops.
    pub flags: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    rst: bool,
    request: bool,
    response: bool,
    shutdown: u32,
    credit_update: bool,
    credit_request: bool,
}

/// One connection, keyed by the muxer on (local port, peer port).
#[derive(Debug)]
pub struct Connection {
    local_port: u32,
    peer_port: u32,
    state: State,
    /// Host-initiated only: the REQUEST has reached the guest.
    request_sent: bool,
    pending: Pending,

    // Guest → host: we are the receiver.
    buf_alloc: u32,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes for the host stream not yet written to it.
    to_host: VecDeque<u8>,
    /// How many leading bytes of `to_host` are ours (the `OK` line), not guest data.
    own_prefix: usize,

    // Host → guest: we are the sender.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    credit_requested: bool,

    /// SHUTDOWN flags received from the guest (cumulative).
    peer_shutdown: u32,
    /// No more bytes will come from the host stream (EOF or error).
    host_read_done: bool,
    /// The host stream takes no more bytes (peer gone or error).
    host_write_done: bool,
    host_write_shut: bool,
    host_read_shut: bool,
}

impl Connection {
    fn new(local_port: u32, peer_port: u32, state: State) -> Connection {
        Connection {
            local_port,
            peer_port,
            state,
            request_sent: false,
            pending: Pending::default(),
            buf_alloc: CONN_BUF_ALLOC,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            to_host: VecDeque::new(),
            own_prefix: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            credit_requested: false,
            peer_shutdown: 0,
            host_read_done: false,
            host_write_done: false,
            host_write_shut: false,
            host_read_shut: false,
        }
    }

    /// A host process asked (`CONNECT <peer_port>`) for the guest's port `peer_port`; we
    /// speak from `local_port`. A REQUEST is queued.
    pub fn host_initiated(local_port: u32, peer_port: u32) -> Connection {
        let mut c = Connection::new(local_port, peer_port, State::Connecting);
        c.pending.request = true;
        c
    }

    /// The guest's REQUEST `req` was accepted (the host socket for its port answered). A
    /// RESPONSE is queued.
    pub fn guest_initiated(req: &Header) -> Connection {
        let mut c = Connection::new(req.dst_port, req.src_port, State::Established);
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending.response = true;
        c
    }

    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the guest has been told about this connection (so a guest reset voids it).
    pub fn guest_knows(&self) -> bool {
        self.state != State::Connecting || self.request_sent
    }

    /// Whether the host stream should be closed now (the connection is over on the host side).
    pub fn host_finished(&self) -> bool {
        matches!(self.state, State::Closing | State::Closed)
    }

    // ----- guest side -----

    /// Handles a packet from the guest addressed to this connection. `payload` is the RW
    /// payload (empty for other ops).
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match hdr.op() {
            Some(Op::Rst) => {
                // The guest refused (while connecting) or aborted the connection. Never
                // answer an RST.
                self.pending = Pending::default();
                self.drop_host_bytes();
                self.state = State::Closed;
            }
            Some(Op::Response) => {
                if self.state == State::Connecting && self.request_sent {
                    self.state = State::Established;
                    let line = super::handshake::ok_line(self.local_port);
                    self.own_prefix = line.len();
                    self.to_host.extend(line.as_bytes());
                } else {
                    self.reset();
                }
            }
            Some(Op::Rw) => self.on_guest_data(payload),
            Some(Op::CreditUpdate) => {}
            Some(Op::CreditRequest) => {
                if self.state == State::Established {
                    self.pending.credit_update = true;
                }
            }
            Some(Op::Shutdown) => {
                if self.state == State::Established {
                    self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                    self.check_finish();
                } else {
                    self.reset();
                }
            }
            Some(Op::Request) | None => self.reset(),
        }
    }

    fn on_guest_data(&mut self, payload: &[u8]) {
        if self.state != State::Established || self.peer_shutdown & SHUTDOWN_SEND != 0 {
            self.reset();
            return;
        }
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let in_flight = (self.rx_cnt - self.fwd_cnt).0;
        if u64::from(in_flight) + u64::from(len) > u64::from(self.buf_alloc) {
            // The guest ignored our credit. Dropping bytes would corrupt the stream.
            crate::warn_limited!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                len,
                in_flight,
                "guest exceeded its vsock credit; resetting the connection"
            );
            self.reset();
            return;
        }
        self.rx_cnt += len;
        if self.host_write_done {
            // Nobody can read it any more; count it as consumed so credit keeps flowing
            // until the close completes.
            self.fwd_cnt += len;
            self.maybe_credit_update();
        } else {
            self.to_host.extend(payload);
        }
    }

    /// The bytes we advertise the guest may still send, from the guest's point of view
    /// (what we last told it).
    fn advertised_free(&self) -> u32 {
        let unacked = (self.rx_cnt - self.last_fwd_cnt_sent).0;
        self.buf_alloc.saturating_sub(unacked)
    }

    fn maybe_credit_update(&mut self) {
        if self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_SEND == 0
            && self.fwd_cnt != self.last_fwd_cnt_sent
            && self.advertised_free() < self.buf_alloc / 2
        {
            self.pending.credit_update = true;
        }
    }

    /// Aborts the connection: an RST is queued, host bytes are dropped.
    pub fn reset(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.pending = Pending::default();
        self.drop_host_bytes();
        if self.state == State::Connecting && !self.request_sent {
            // The guest never heard of it.
            self.state = State::Closed;
        } else {
            self.pending.rst = true;
            self.state = State::Closing;
        }
    }

    fn drop_host_bytes(&mut self) {
        self.to_host.clear();
        self.own_prefix = 0;
    }

    /// Ends the connection once both directions are finished.
    fn check_finish(&mut self) {
        match self.state {
            State::Connecting => {
                if self.host_write_done {
                    self.reset();
                }
            }
            State::Established => {
                let to_guest_done = self.host_read_done || self.peer_shutdown & SHUTDOWN_RCV != 0;
                let to_host_done = self.host_write_done
                    || (self.peer_shutdown & SHUTDOWN_SEND != 0 && self.to_host.is_empty());
                if to_guest_done && to_host_done {
                    self.pending = Pending::default();
                    if self.peer_shutdown == SHUTDOWN_BOTH {
                        // The guest closed and waits for our RST (clean disconnect).
                        self.pending.rst = true;
                    } else {
                        // We close: the guest answers with an RST, which we ignore.
                        self.pending.shutdown = SHUTDOWN_BOTH;
                    }
                    self.state = State::Closing;
                }
            }
            State::Closing | State::Closed => {}
        }
    }

    // ----- packets to the guest -----

    /// Whether a control packet is queued.
    pub fn has_control(&self) -> bool {
        let p = &self.pending;
        p.rst || p.request || p.response || p.shutdown != 0 || p.credit_update || p.credit_request
    }

    /// Takes the next queued control packet; the caller sends it (with `credit_fields`).
    pub fn take_control(&mut self) -> Option<Control> {
        let p = &mut self.pending;
        let ctl = |op| Some(Control { op, flags: 0 });
        if p.rst {
            *p = Pending::default();
            self.state = State::Closed;
            return ctl(Op::Rst);
        }
        if p.request {
            p.request = false;
            self.request_sent = true;
            return ctl(Op::Request);
        }
        if p.response {
            p.response = false;
            return ctl(Op::Response);
        }
        if p.shutdown != 0 {
            let flags = std::mem::take(&mut p.shutdown);
            if self.state == State::Closing {
                *p = Pending::default();
                self.state = State::Closed;
            }
            return Some(Control {
                op: Op::Shutdown,
                flags,
            });
        }
        if p.credit_update {
            p.credit_update = false;
            return ctl(Op::CreditUpdate);
        }
        if p.credit_request {
            p.credit_request = false;
            return ctl(Op::CreditRequest);
        }
        None
    }

    /// `(buf_alloc, fwd_cnt)` for the header of a packet about to be sent: every packet
    /// carries our credit, so this also settles any queued CREDIT_UPDATE.
    pub fn credit_fields(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        (self.buf_alloc, self.fwd_cnt.0)
    }

    /// How many bytes the guest can take right now (its credit for us).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the muxer should read the host stream (data may go to the guest now).
    pub fn wants_host_read(&self) -> bool {
        self.state == State::Established
            && !self.host_read_done
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Records `n` payload bytes sent to the guest in an RW packet (`n <= peer_credit()`).
    pub fn on_data_sent(&mut self, n: u32) {
        debug_assert!(n <= self.peer_credit());
        self.tx_cnt += n;
        if self.peer_credit() == 0 && !self.credit_requested {
            // Blocked on the guest: ask once for fresh credit (it also volunteers updates).
            self.credit_requested = true;
            self.pending.credit_request = true;
        }
    }

    // ----- host side -----

    /// Bytes waiting for the host stream (contiguous front part).
    pub fn host_bytes(&self) -> &[u8] {
        self.to_host.as_slices().0
    }

    /// Whether bytes wait for the host stream.
    pub fn has_host_bytes(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Records `n` bytes written to the host stream.
    pub fn on_host_written(&mut self, n: usize) {
        let n = n.min(self.to_host.len());
        self.to_host.drain(..n);
        let ours = n.min(self.own_prefix);
        self.own_prefix -= ours;
        let data = u32::try_from(n - ours).unwrap_or(u32::MAX);
        self.fwd_cnt += data;
        self.maybe_credit_update();
        self.check_finish();
    }

    /// The host stream reached EOF: no more data for the guest.
    pub fn on_host_eof(&mut self) {
        if self.host_read_done {
            return;
        }
        self.host_read_done = true;
        if self.state == State::Established && self.peer_shutdown & SHUTDOWN_RCV == 0 {
            self.pending.shutdown |= SHUTDOWN_SEND;
        }
        self.check_finish();
    }

    /// The host stream can take no more bytes (its peer closed, or a write failed).
    pub fn on_host_write_closed(&mut self) {
        if self.host_write_done {
            return;
        }
        self.host_write_done = true;
        self.drop_host_bytes();
        // Whatever was buffered counts as consumed.
        self.fwd_cnt = self.rx_cnt;
        self.check_finish();
    }

    /// Whether the host stream's write half should be shut now (the guest will send no
    /// more and everything was delivered). The caller shuts it and calls
    /// `host_write_shut_done`.
    pub fn should_shut_host_write(&self) -> bool {
        self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_SEND != 0
            && self.to_host.is_empty()
            && !self.host_write_shut
            && !self.host_write_done
    }

    pub fn host_write_shut_done(&mut self) {
        self.host_write_shut = true;
    }

    /// Whether the host stream's read half should be shut now (the guest will receive no
    /// more, so the host writer should see EPIPE).
    pub fn should_shut_host_read(&self) -> bool {
        self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_RCV != 0
            && !self.host_read_shut
            && !self.host_read_done
    }

    pub fn host_read_shut_done(&mut self) {
        self.host_read_shut = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::TYPE_STREAM;
    use super::*;

    const LOCAL: u32 = 1 << 30;
    const PEER: u32 = 1024;

    fn pkt(op: Op) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: PEER,
            dst_port: LOCAL,
            type_: TYPE_STREAM,
            op: op as u16,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
            ..Header::default()
        }
    }

    fn with_credit(op: Op, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..pkt(op)
        }
    }

    fn shutdown(flags: u32) -> Header {
        Header {
            flags,
            ..pkt(Op::Shutdown)
        }
    }

    /// A host-initiated connection the guest accepted.
    fn established() -> Connection {
        let mut c = Connection::host_initiated(LOCAL, PEER);
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::Request));
        c.credit_fields();
        c.on_guest_packet(&pkt(Op::Response), &[]);
        assert_eq!(c.state(), State::Established);
        let ok = c.host_bytes().len();
        c.on_host_written(ok);
        c
    }

    fn drain_controls(c: &mut Connection) -> Vec<Control> {
        let mut v = Vec::new();
        while let Some(ctl) = c.take_control() {
            c.credit_fields();
            v.push(ctl);
        }
        v
    }

    #[test]
    fn host_initiated_request_response() {
        let mut c = Connection::host_initiated(LOCAL, PEER);
        assert_eq!(c.state(), State::Connecting);
        assert!(!c.guest_knows());
        assert!(!c.wants_host_read());
        assert_eq!(
            c.take_control(),
            Some(Control {
                op: Op::Request,
                flags: 0
            })
        );
        assert!(c.guest_knows());
        assert_eq!(c.take_control(), None);
        c.on_guest_packet(&pkt(Op::Response), &[]);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.host_bytes(), format!("OK {LOCAL}\n").as_bytes());
        // The OK line is ours, not guest data: writing it does not move fwd_cnt.
        let n = c.host_bytes().len();
        c.on_host_written(n);
        assert_eq!(c.credit_fields(), (CONN_BUF_ALLOC, 0));
        assert!(c.wants_host_read());
    }

    #[test]
    fn host_initiated_refused_with_rst() {
        let mut c = Connection::host_initiated(LOCAL, PEER);
        c.take_control();
        c.on_guest_packet(&pkt(Op::Rst), &[]);
        assert_eq!(c.state(), State::Closed);
        assert!(c.host_finished());
        assert!(!c.has_host_bytes());
        // Never answer an RST.
        assert_eq!(c.take_control(), None);
    }

    #[test]
    fn response_before_request_sent_is_a_protocol_error() {
        let mut c = Connection::host_initiated(LOCAL, PEER);
        c.on_guest_packet(&pkt(Op::Response), &[]);
        // The guest never saw our REQUEST: nothing to reset on its side.
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.take_control(), None);
    }

    #[test]
    fn host_gone_before_request_sent_needs_no_packet() {
        let mut c = Connection::host_initiated(LOCAL, PEER);
        c.on_host_write_closed();
        assert_eq!(c.state(), State::Closed);
        assert!(!c.has_control());
    }

    #[test]
    fn host_gone_while_connecting_resets() {
        let mut c = Connection::host_initiated(LOCAL, PEER);
        c.take_control();
        c.on_host_write_closed();
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::Rst));
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn guest_initiated_gets_response_and_peer_credit() {
        let req = Header {
            src_port: 5555,
            dst_port: 1025,
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..pkt(Op::Request)
        };
        let mut c = Connection::guest_initiated(&req);
        assert_eq!(c.local_port(), 1025);
        assert_eq!(c.peer_port(), 5555);
        assert_eq!(c.state(), State::Established);
        assert_eq!(c.peer_credit(), 1000);
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::Response));
        assert_eq!(c.take_control(), None);
    }

    #[test]
    fn never_sends_beyond_peer_credit() {
        let mut c = established();
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 100, 0), &[]);
        assert_eq!(c.peer_credit(), 100);
        c.on_data_sent(60);
        assert_eq!(c.peer_credit(), 40);
        assert!(c.wants_host_read());
        c.on_data_sent(40);
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_host_read());
        // Blocked: one CREDIT_REQUEST.
        assert_eq!(drain_controls(&mut c).len(), 1);
        assert_eq!(c.take_control(), None);
        // The guest consumed 70 bytes.
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 100, 70), &[]);
        assert_eq!(c.peer_credit(), 70);
        assert!(c.wants_host_read());
    }

    #[test]
    fn credit_request_is_sent_once_per_stall() {
        let mut c = established();
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 10, 0), &[]);
        c.on_data_sent(10);
        assert_eq!(
            drain_controls(&mut c),
            vec![Control {
                op: Op::CreditRequest,
                flags: 0
            }]
        );
        // Still stalled: a guest packet without new credit does not re-arm the request.
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 10, 0), &[]);
        assert!(!c.has_control());
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 10, 10), &[]);
        c.on_data_sent(10);
        assert!(c.has_control());
    }

    #[test]
    fn peer_credit_handles_counter_wrap() {
        let mut c = established();
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 100, u32::MAX - 9), &[]);
        c.tx_cnt = Wrapping(u32::MAX - 9);
        c.on_data_sent(30); // tx_cnt wraps to 20
        assert_eq!(c.peer_credit(), 70);
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 100, 15), &[]);
        assert_eq!(c.peer_credit(), 95);
    }

    #[test]
    fn bogus_peer_fwd_cnt_gives_no_credit() {
        let mut c = established();
        // The guest claims to have consumed more than we ever sent.
        c.on_guest_packet(&with_credit(Op::CreditUpdate, 100, 500), &[]);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_is_buffered_and_counted() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::Rw), b"hello");
        assert_eq!(c.host_bytes(), b"hello");
        c.on_host_written(2);
        assert_eq!(c.host_bytes(), b"llo");
        assert_eq!(c.credit_fields(), (CONN_BUF_ALLOC, 2));
    }

    #[test]
    fn guest_exceeding_our_credit_is_reset() {
        let mut c = established();
        let full = vec![7u8; CONN_BUF_ALLOC as usize];
        c.on_guest_packet(&pkt(Op::Rw), &full);
        assert_eq!(
            c.host_bytes().len() + c.to_host.as_slices().1.len(),
            full.len()
        );
        c.on_guest_packet(&pkt(Op::Rw), b"x");
        assert_eq!(c.state(), State::Closing);
        assert!(!c.has_host_bytes());
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::Rst));
    }

    #[test]
    fn buffering_is_bounded_by_the_window() {
        let mut c = established();
        let chunk = vec![1u8; 4096];
        let mut accepted = 0usize;
        // A well-behaved guest stays within credit: the buffer never exceeds buf_alloc.
        while (c.rx_cnt - c.fwd_cnt).0 + 4096 <= CONN_BUF_ALLOC {
            c.on_guest_packet(&pkt(Op::Rw), &chunk);
            accepted += chunk.len();
            assert!(c.to_host.len() <= CONN_BUF_ALLOC as usize);
        }
        assert_eq!(accepted, CONN_BUF_ALLOC as usize);
        assert_eq!(c.state(), State::Established);
    }

    #[test]
    fn credit_update_when_guest_view_gets_small() {
        let mut c = established();
        c.credit_fields();
        let half = vec![0u8; (CONN_BUF_ALLOC / 2) as usize];
        c.on_guest_packet(&pkt(Op::Rw), &half);
        c.on_guest_packet(&pkt(Op::Rw), &half[..1024]);
        // Not consumed yet: an update would tell the guest nothing new.
        assert!(!c.has_control());
        c.on_host_written(100);
        // The guest sees less than half the window free and we consumed something.
        assert_eq!(
            c.take_control(),
            Some(Control {
                op: Op::CreditUpdate,
                flags: 0
            })
        );
        assert_eq!(c.credit_fields(), (CONN_BUF_ALLOC, 100));
        assert!(!c.has_control());
    }

    #[test]
    fn no_credit_update_while_window_is_wide_open() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::Rw), &[0u8; 1000]);
        c.on_host_written(1000);
        assert!(!c.has_control());
    }

    #[test]
    fn any_packet_settles_a_pending_credit_update() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::CreditRequest), &[]);
        assert!(c.has_control());
        // An RW packet about to be sent carries our credit.
        c.credit_fields();
        assert!(!c.has_control());
    }

    #[test]
    fn credit_request_is_answered() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::CreditRequest), &[]);
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::CreditUpdate));
    }

    #[test]
    fn host_eof_sends_shutdown_send_then_guest_closes() {
        let mut c = established();
        c.on_host_eof();
        assert!(!c.wants_host_read());
        assert_eq!(
            c.take_control(),
            Some(Control {
                op: Op::Shutdown,
                flags: SHUTDOWN_SEND
            })
        );
        assert_eq!(c.state(), State::Established);
        // The guest still sends data; the host still gets it.
        c.on_guest_packet(&pkt(Op::Rw), b"tail");
        assert_eq!(c.host_bytes(), b"tail");
        // The guest closes: SHUTDOWN both; we flush and then answer with RST.
        c.on_guest_packet(&shutdown(SHUTDOWN_BOTH), &[]);
        assert_eq!(c.state(), State::Established);
        c.on_host_written(4);
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::Rst));
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn guest_close_with_nothing_buffered_is_answered_with_rst() {
        let mut c = established();
        c.on_guest_packet(&shutdown(SHUTDOWN_BOTH), &[]);
        assert_eq!(c.state(), State::Closing);
        assert!(c.host_finished());
        assert_eq!(drain_controls(&mut c).len(), 1);
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn guest_half_close_shuts_host_write_after_flush() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::Rw), b"req");
        c.on_guest_packet(&shutdown(SHUTDOWN_SEND), &[]);
        assert!(!c.should_shut_host_write());
        c.on_host_written(3);
        assert!(c.should_shut_host_write());
        c.host_write_shut_done();
        assert!(!c.should_shut_host_write());
        // Host → guest still flows.
        assert!(c.wants_host_read());
        assert_eq!(c.state(), State::Established);
        // Data after SHUTDOWN(SEND) is a protocol error.
        let mut d = established();
        d.on_guest_packet(&shutdown(SHUTDOWN_SEND), &[]);
        d.on_guest_packet(&pkt(Op::Rw), b"late");
        assert_eq!(d.take_control().map(|c| c.op), Some(Op::Rst));
        // Host EOF completes the close with SHUTDOWN(both).
        c.on_host_eof();
        assert_eq!(c.state(), State::Closing);
        assert_eq!(
            c.take_control(),
            Some(Control {
                op: Op::Shutdown,
                flags: SHUTDOWN_BOTH
            })
        );
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn guest_receive_shutdown_stops_host_reads() {
        let mut c = established();
        c.on_guest_packet(&shutdown(SHUTDOWN_RCV), &[]);
        assert!(!c.wants_host_read());
        assert!(c.should_shut_host_read());
        c.host_read_shut_done();
        assert!(!c.should_shut_host_read());
        assert_eq!(c.state(), State::Established);
    }

    #[test]
    fn host_hangup_closes_with_shutdown_both() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::Rw), b"lost");
        c.on_host_write_closed();
        assert!(!c.has_host_bytes());
        // Still reading what the host wrote before it went away.
        assert!(c.wants_host_read());
        // Guest data now is discarded but consumed, so credit keeps flowing.
        c.on_guest_packet(&pkt(Op::Rw), b"more");
        assert_eq!(c.credit_fields().1, 8);
        c.on_host_eof();
        assert_eq!(c.state(), State::Closing);
        assert_eq!(
            drain_controls(&mut c),
            vec![Control {
                op: Op::Shutdown,
                flags: SHUTDOWN_BOTH
            }]
        );
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn guest_rst_closes_without_reply() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::Rw), b"data");
        c.on_guest_packet(&pkt(Op::Rst), &[]);
        assert_eq!(c.state(), State::Closed);
        assert!(!c.has_host_bytes());
        assert!(!c.has_control());
    }

    #[test]
    fn duplicate_request_and_unknown_op_reset() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::Request), &[]);
        assert_eq!(c.take_control().map(|c| c.op), Some(Op::Rst));
        let mut d = established();
        let bad = Header {
            op: 42,
            ..pkt(Op::Rw)
        };
        d.on_guest_packet(&bad, &[]);
        assert_eq!(d.take_control().map(|c| c.op), Some(Op::Rst));
    }

    #[test]
    fn packets_after_close_are_ignored() {
        let mut c = established();
        c.reset();
        c.on_guest_packet(&pkt(Op::Rw), b"x");
        c.on_guest_packet(&pkt(Op::CreditRequest), &[]);
        assert_eq!(drain_controls(&mut c).len(), 1);
        c.on_guest_packet(&pkt(Op::Rw), b"x");
        assert!(!c.has_control());
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn reset_orders_rst_before_anything_else() {
        let mut c = established();
        c.on_guest_packet(&pkt(Op::CreditRequest), &[]);
        c.reset();
        assert_eq!(
            drain_controls(&mut c)
                .iter()
                .map(|c| c.op)
                .collect::<Vec<_>>(),
            vec![Op::Rst]
        );
    }
}
