//! Session tests: our client against our server over in-memory pipes and TCP loopback, and
//! our server against a peer speaking raw frames the way spdystream does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::frame::{self, Frame, flags, rst};
use super::headers::{HeaderDecoder, HeaderEncoder};
use super::*;

const LIMIT: Duration = Duration::from_secs(60);

fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn pair() -> (
    (Session, mpsc::Receiver<Stream>),
    (Session, mpsc::Receiver<Stream>),
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Session::client(a), Session::server(b))
}

async fn accept(rx: &mut mpsc::Receiver<Stream>) -> Stream {
    timeout(LIMIT, rx.recv())
        .await
        .expect("accept timed out")
        .expect("session ended")
}

/// Opens a stream from `from` and has the other side accept and reply to it.
async fn open_pair(
    from: &Session,
    to: &mut mpsc::Receiver<Stream>,
    headers: &[(&str, &str)],
) -> (Stream, Stream) {
    let (opened, accepted) = tokio::join!(from.open(hdrs(headers)), async {
        let s = accept(to).await;
        s.reply(vec![]).await.expect("reply");
        s
    });
    (opened.expect("open"), accepted)
}

async fn read_all(rd: &mut StreamReader) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = timeout(LIMIT, rd.read()).await.expect("read timed out") {
        out.extend_from_slice(&b);
    }
    out
}

async fn tcp_pair() -> (
    (Session, mpsc::Receiver<Stream>),
    (Session, mpsc::Receiver<Stream>),
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (conn, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (
        Session::client(conn.expect("connect")),
        Session::server(accepted.expect("accept").0),
    )
}

#[tokio::test]
async fn open_reply_data_both_ways_and_half_close() {
    let ((client, _c_in), (_server, mut s_in)) = pair();
    exchange(&client, &mut s_in).await;
}

#[tokio::test]
async fn the_same_over_tcp_loopback_with_reset_ping_and_goaway() {
    let ((client, _c_in), (server, mut s_in)) = tcp_pair().await;
    exchange(&client, &mut s_in).await;
    client.ping().await.expect("client ping");
    server.ping().await.expect("server ping");
    let (opened, accepted) = open_pair(&client, &mut s_in, &[("streamtype", "stdout")]).await;
    assert_eq!(opened.id(), 3);
    let (mut s_rd, _s_wr) = accepted.split();
    let (_c_rd, c_wr) = opened.split();
    c_wr.write(b"abc").await.expect("write");
    c_wr.reset(rst::CANCEL).await.expect("reset");
    assert_eq!(read_all(&mut s_rd).await, b"abc");
    server.goaway().await;
    timeout(LIMIT, client.closed())
        .await
        .expect("client not closed");
    timeout(LIMIT, server.closed())
        .await
        .expect("server not closed");
}

/// Opens a stream with headers, replies, sends both ways, half-closes both ways.
async fn exchange(client: &Session, s_in: &mut mpsc::Receiver<Stream>) {
    let (opened, accepted) = open_pair(
        client,
        s_in,
        &[("StreamType", "stdin"), ("Port", "80"), ("port", "81")],
    )
    .await;
    assert_eq!(opened.id(), 1, "client-opened ids are odd, from 1");
    assert_eq!(accepted.id(), 1);
    assert_eq!(accepted.header("streamtype"), Some("stdin"));
    assert_eq!(accepted.header("StreamType"), Some("stdin"));
    assert_eq!(accepted.header("missing"), None);
    // Repeated names travel as one NUL-separated value and come back as separate entries.
    let ports: Vec<&str> = accepted
        .headers()
        .iter()
        .filter(|(n, _)| n == "port")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ports, ["80", "81"]);

    let (mut c_rd, c_wr) = opened.split();
    let (mut s_rd, s_wr) = accepted.split();
    c_wr.write(b"hello ").await.expect("write");
    c_wr.write(b"server").await.expect("write");
    c_wr.finish().await.expect("finish");
    assert!(matches!(
        c_wr.write(b"late").await,
        Err(Error::StreamClosed(1))
    ));
    assert!(matches!(c_wr.finish().await, Err(Error::StreamClosed(1))));
    assert_eq!(read_all(&mut s_rd).await, b"hello server");

    // Half-closed: the other direction still works.
    s_wr.write(b"hello client").await.expect("write");
    s_wr.finish().await.expect("finish");
    assert_eq!(read_all(&mut c_rd).await, b"hello client");
}

#[tokio::test]
async fn either_side_opens_streams_with_its_own_parity() {
    let ((client, mut c_in), (server, mut s_in)) = pair();
    let (a, _) = open_pair(&client, &mut s_in, &[("n", "a")]).await;
    let (b, b_in) = open_pair(&server, &mut c_in, &[("n", "b")]).await;
    let (c, _) = open_pair(&client, &mut s_in, &[("n", "c")]).await;
    let (d, _) = open_pair(&server, &mut c_in, &[("n", "d")]).await;
    assert_eq!([a.id(), b.id(), c.id(), d.id()], [1, 2, 3, 4]);
    assert_eq!(b_in.header("n"), Some("b"));
    // The server-opened stream carries data like any other.
    let (_b_rd, b_wr) = b.split();
    let (mut bin_rd, _bin_wr) = b_in.split();
    b_wr.write(b"from the server").await.expect("write");
    b_wr.finish().await.expect("finish");
    assert_eq!(read_all(&mut bin_rd).await, b"from the server");
}

#[tokio::test]
async fn reset_ends_a_stream_on_both_sides() {
    let ((client, _c_in), (_server, mut s_in)) = pair();
    let (opened, accepted) = open_pair(&client, &mut s_in, &[("streamtype", "stdout")]).await;
    let (mut c_rd, c_wr) = opened.split();
    let (mut s_rd, s_wr) = accepted.split();
    s_wr.write(b"partial").await.expect("write");
    assert_eq!(c_rd.read().await.as_deref(), Some(&b"partial"[..]));
    c_wr.reset(rst::CANCEL).await.expect("reset");
    // Resetting twice is harmless; sending after it is not possible.
    c_wr.reset(rst::CANCEL).await.expect("reset again");
    assert!(matches!(
        c_wr.write(b"x").await,
        Err(Error::StreamClosed(1))
    ));
    assert_eq!(c_rd.read().await, None);
    // The server sees the end of the stream and then the reset on its next write.
    assert_eq!(timeout(LIMIT, s_rd.read()).await.expect("timed out"), None);
    let err = s_wr.write(b"more").await;
    assert!(
        matches!(
            err,
            Err(Error::Reset {
                id: 1,
                status: rst::CANCEL
            })
        ),
        "{err:?}"
    );
    // The session itself carries on.
    let (again, _) = open_pair(&client, &mut s_in, &[("streamtype", "stdout")]).await;
    assert_eq!(again.id(), 3);
}

#[tokio::test]
async fn a_reset_instead_of_a_reply_fails_open() {
    let ((client, _c_in), (_server, mut s_in)) = pair();
    let (opened, ()) = tokio::join!(client.open(hdrs(&[("port", "1")])), async {
        let s = accept(&mut s_in).await;
        let (_rd, wr) = s.split();
        wr.reset(rst::REFUSED_STREAM).await.expect("reset");
    });
    let err = opened.expect_err("open succeeded");
    assert!(
        matches!(
            err,
            Error::Reset {
                id: 1,
                status: rst::REFUSED_STREAM
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn dropping_an_unfinished_stream_resets_it() {
    let ((client, _c_in), (_server, mut s_in)) = pair();
    let (opened, accepted) = open_pair(&client, &mut s_in, &[("streamtype", "stdin")]).await;
    drop(accepted);
    let (mut rd, wr) = opened.split();
    assert_eq!(timeout(LIMIT, rd.read()).await.expect("timed out"), None);
    let err = wr.write(b"anyone?").await;
    assert!(
        matches!(
            err,
            Err(Error::Reset {
                id: 1,
                status: rst::CANCEL
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn writes_need_a_reply_first_and_bad_headers_are_refused() {
    let ((client, _c_in), (_server, mut s_in)) = pair();
    let (opened, ()) = tokio::join!(client.open(hdrs(&[("a", "b")])), async {
        let s = accept(&mut s_in).await;
        let (_rd, wr) = s.split();
        // spdystream would drop DATA on a stream it has no reply for.
        let early = wr.write(b"too early").await;
        assert!(matches!(early, Err(Error::InvalidState(1, _))), "{early:?}");
        // Dropping the unreplied stream refuses it (CANCEL), which fails the open.
    });
    let err = opened.expect_err("open succeeded");
    assert!(
        matches!(
            err,
            Error::Reset {
                id: 1,
                status: rst::CANCEL
            }
        ),
        "{err:?}"
    );
    let err = client.open(hdrs(&[("Connection", "close")])).await;
    assert!(matches!(err, Err(Error::Header(_))), "{err:?}");
    let err = client.open(hdrs(&[("bad name", "x")])).await;
    assert!(matches!(err, Err(Error::Header(_))), "{err:?}");
}

#[tokio::test]
async fn replying_twice_or_to_our_own_stream_is_refused() {
    let ((client, _c_in), (_server, mut s_in)) = pair();
    let (opened, accepted) = open_pair(&client, &mut s_in, &[("a", "b")]).await;
    assert!(matches!(
        accepted.reply(vec![]).await,
        Err(Error::InvalidState(1, _))
    ));
    assert!(matches!(
        opened.reply(vec![]).await,
        Err(Error::InvalidState(1, _))
    ));
}

#[tokio::test]
async fn pings_are_answered_both_ways() {
    let ((client, _c_in), (server, _s_in)) = pair();
    for _ in 0..3 {
        timeout(LIMIT, client.ping())
            .await
            .expect("timed out")
            .expect("client ping");
        timeout(LIMIT, server.ping())
            .await
            .expect("timed out")
            .expect("server ping");
    }
}

#[tokio::test]
async fn goaway_ends_the_session_on_both_sides() {
    let ((client, _c_in), (server, mut s_in)) = pair();
    let (opened, accepted) = open_pair(&client, &mut s_in, &[("streamtype", "stdout")]).await;
    let (mut c_rd, _c_wr) = opened.split();
    let (_s_rd, s_wr) = accepted.split();
    // Data queued before GOAWAY is still delivered.
    s_wr.write(b"last words").await.expect("write");
    timeout(LIMIT, server.goaway())
        .await
        .expect("goaway timed out");
    assert!(matches!(s_wr.write(b"x").await, Err(Error::SessionClosed)));
    assert!(matches!(
        server.open(vec![]).await,
        Err(Error::SessionClosed)
    ));
    assert_eq!(read_all(&mut c_rd).await, b"last words");
    timeout(LIMIT, client.closed())
        .await
        .expect("client not closed");
    timeout(LIMIT, server.closed())
        .await
        .expect("server not closed");
    assert!(client.is_closed() && server.is_closed());
    assert!(matches!(
        client.open(vec![]).await,
        Err(Error::SessionClosed)
    ));
    assert!(matches!(client.ping().await, Err(Error::SessionClosed)));
}

#[tokio::test]
async fn the_peer_going_away_ends_everything() {
    let (a, b) = tokio::io::duplex(1024);
    let (client, mut c_in) = Session::client(a);
    drop(b);
    timeout(LIMIT, client.closed())
        .await
        .expect("not closed at EOF");
    assert!(c_in.recv().await.is_none());
    assert!(matches!(
        client.open(vec![]).await,
        Err(Error::SessionClosed)
    ));
}

#[tokio::test]
async fn a_pending_open_fails_when_the_connection_drops() {
    let (a, b) = tokio::io::duplex(1024);
    let (client, _c_in) = Session::client(a);
    let open = tokio::spawn({
        let client = client.clone();
        async move { client.open(hdrs(&[("x", "y")])).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(b);
    let r = timeout(LIMIT, open)
        .await
        .expect("open hung")
        .expect("join");
    assert!(matches!(r, Err(Error::SessionClosed)), "{r:?}");
}

/// Deterministic pseudo-random bytes.
fn fill(seed: &mut u64, buf: &mut [u8]) {
    for b in buf {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *b = (*seed >> 24) as u8;
    }
}

/// Sends `total` bytes one way while the reader sleeps now and then; checks the data by hash
/// and that the bytes in flight (accepted by `write` but not read) stay bounded.
async fn slow_reader_transfer(
    client: Session,
    mut s_in: mpsc::Receiver<Stream>,
    total: usize,
    max_in_flight: Option<usize>,
) {
    let (opened, accepted) = open_pair(&client, &mut s_in, &[("streamtype", "stdin")]).await;
    let (_c_rd, c_wr) = opened.split();
    let (mut s_rd, _s_wr) = accepted.split();
    let written = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn({
        let written = written.clone();
        async move {
            let mut seed = 0x2545_f491_4f6c_dd1d;
            let mut hash = Sha256::new();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                fill(&mut seed, &mut chunk[..n]);
                hash.update(&chunk[..n]);
                c_wr.write(&chunk[..n]).await.expect("write");
                sent += n;
                written.store(sent as u64, Ordering::SeqCst);
            }
            c_wr.finish().await.expect("finish");
            hash.finalize()
        }
    });
    let mut hash = Sha256::new();
    let mut got = 0usize;
    let mut next_pause = 0usize;
    let mut max_seen = 0usize;
    while let Some(b) = timeout(LIMIT, s_rd.read()).await.expect("read timed out") {
        assert!(s_rd.buffered() <= STREAM_BUFFER);
        hash.update(&b);
        got += b.len();
        let in_flight = written.load(Ordering::SeqCst) as usize - got.min(total);
        max_seen = max_seen.max(in_flight);
        if got >= next_pause {
            // The slow part: the consumer stops for a while every 2 MiB.
            next_pause += 2 << 20;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(got, total);
    let sent_hash = timeout(LIMIT, sender)
        .await
        .expect("sender hung")
        .expect("sender");
    assert_eq!(hash.finalize(), sent_hash, "data corrupted");
    if let Some(max) = max_in_flight {
        assert!(max_seen <= max, "{max_seen} bytes in flight (limit {max})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_to_a_slow_reader_in_bounded_memory() {
    let ((client, _c_in), (_server, s_in)) = pair();
    // Everything between the writer and the reader is bounded: the send queue (64 frames of
    // 16 KiB), one write batch (256 KiB), the 64 KiB pipe, the reader's frame buffer (~64 KiB),
    // the stream buffer (256 KiB), plus one 64 KiB write call: about 1.7 MiB (1.6 MiB seen).
    // Without backpressure it would approach the 64 MiB sent.
    let bound = 2 << 20;
    timeout(
        Duration::from_secs(300),
        slow_reader_transfer(client, s_in, 64 << 20, Some(bound)),
    )
    .await
    .expect("transfer timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_over_tcp_loopback() {
    let ((client, _c_in), (_server, s_in)) = tcp_pair().await;
    timeout(
        Duration::from_secs(300),
        slow_reader_transfer(client, s_in, 64 << 20, None),
    )
    .await
    .expect("transfer timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_streams_concurrently() {
    let ((client, _c_in), (server, mut s_in)) = pair();
    // Echo server: each accepted stream sends back what it receives, then finishes.
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(s) = s_in.recv().await {
            tasks.push(tokio::spawn(async move {
                s.reply(vec![]).await.expect("reply");
                let (mut rd, wr) = s.split();
                while let Some(b) = rd.read().await {
                    wr.write(&b).await.expect("echo");
                }
                wr.finish().await.expect("finish");
            }));
        }
        for t in tasks {
            t.await.expect("echo task");
        }
    });
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let id = i.to_string();
            let s = client
                .open(hdrs(&[("streamtype", "data"), ("requestid", &id)]))
                .await
                .expect("open");
            let (mut rd, wr) = s.split();
            let mut seed = i + 1;
            let mut data = vec![0u8; 100_000 + i as usize * 997];
            fill(&mut seed, &mut data);
            let send = {
                let data = data.clone();
                tokio::spawn(async move {
                    for piece in data.chunks(7_000) {
                        wr.write(piece).await.expect("write");
                    }
                    wr.finish().await.expect("finish");
                })
            };
            let back = read_all(&mut rd).await;
            send.await.expect("send");
            assert!(back == data, "stream {i}: echo differs");
        }));
    }
    for t in tasks {
        timeout(LIMIT, t)
            .await
            .expect("stream timed out")
            .expect("stream task");
    }
    server.goaway().await;
    timeout(LIMIT, echo)
        .await
        .expect("echo hung")
        .expect("echo");
}

/// The far end of a pipe, speaking frames directly (as spdystream would).
struct RawPeer {
    io: DuplexStream,
    buf: BytesMut,
    enc: HeaderEncoder,
    dec: HeaderDecoder,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            enc: HeaderEncoder::new().expect("encoder"),
            dec: HeaderDecoder::new(),
        }
    }

    async fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).expect("encode");
        // spdystream writes each field separately; deliver in small pieces too.
        for piece in b.chunks(5) {
            self.io.write_all(piece).await.expect("send");
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("send");
    }

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = frame::decode(&mut self.buf).expect("decode") {
                return Some(f);
            }
            let n = timeout(LIMIT, self.io.read_buf(&mut self.buf))
                .await
                .expect("recv timed out")
                .expect("recv");
            if n == 0 {
                return None;
            }
        }
    }
}

#[tokio::test]
async fn a_server_session_speaks_to_a_raw_spdy3_peer() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, mut s_in) = Session::server(b);
    let mut peer = RawPeer::new(a);

    // node-spdy's SYN_STREAM test frame: stream 1, `:method: GET`, `:path: /`, compressed by
    // another zlib with the SPDY/3 dictionary. Our decoder context continues from it.
    let syn = "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006b32a\
               4804974d8cfa00000000ffff";
    let syn: Vec<u8> = (0..syn.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&syn[i..i + 2], 16).expect("hex"))
        .collect();
    peer.send_raw(&syn).await;
    let s1 = accept(&mut s_in).await;
    assert_eq!(
        (s1.id(), s1.header(":method"), s1.header(":path")),
        (1, Some("GET"), Some("/"))
    );

    // Frames spdystream might see or send but that mean nothing here.
    peer.send(Frame::Settings {
        flags: 0,
        entries: vec![frame::Setting {
            flags: 0,
            id: 7,
            value: 1,
        }],
    })
    .await;
    peer.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 1,
    })
    .await;
    // A control frame of a type SPDY/3 does not define (10) is skipped.
    peer.send_raw(&[0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x02, 0xab, 0xcd])
        .await;
    // A client PING (odd id) is echoed.
    peer.send(Frame::Ping { id: 7 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 7 }));

    // Our SYN_REPLY starts our compression stream: zlib header with the SPDY/3 dictionary id.
    s1.reply(hdrs(&[("x-reply", "yes")])).await.expect("reply");
    let Some(Frame::SynReply {
        stream_id: 1,
        flags: 0,
        header_block,
    }) = peer.recv().await
    else {
        panic!("expected SYN_REPLY");
    };
    assert_eq!(&header_block[..6], [0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
    assert_eq!(
        peer.dec.decode(&header_block),
        Ok(hdrs(&[("x-reply", "yes")]))
    );

    // One large DATA frame, as spdystream writes one frame per Write call.
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    peer.send(Frame::Data {
        stream_id: 1,
        flags: flags::FIN,
        data: Bytes::from(big.clone()),
    })
    .await;
    let (mut rd, wr) = s1.split();
    let got = read_all(&mut rd).await;
    assert!(got == big, "large frame mangled");
    wr.write(&vec![9u8; 40_000]).await.expect("write");
    wr.finish().await.expect("finish");
    let mut echoed = 0;
    loop {
        match peer.recv().await {
            Some(Frame::Data {
                stream_id: 1,
                flags: fl,
                data,
            }) => {
                assert!(data.len() <= MAX_DATA_FRAME);
                echoed += data.len();
                if fl & flags::FIN != 0 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, 40_000);

    // GOAWAY from the peer ends the session.
    peer.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: 0,
    })
    .await;
    timeout(LIMIT, server.closed())
        .await
        .expect("not closed after GOAWAY");
}

#[tokio::test]
async fn invalid_stream_ids_are_reset_and_goaway_names_the_last_stream() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, mut s_in) = Session::server(b);
    let mut peer = RawPeer::new(a);
    fn syn(peer: &mut RawPeer, id: u32) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            header_block: peer
                .enc
                .encode(&hdrs(&[("streamtype", "error")]))
                .expect("enc"),
        }
    }
    let f = syn(&mut peer, 3);
    peer.send(f).await;
    let s3 = accept(&mut s_in).await;
    assert_eq!(s3.id(), 3);
    // Even ids belong to the server; ids must grow.
    for bad in [4, 1] {
        let f = syn(&mut peer, bad);
        peer.send(f).await;
        assert_eq!(
            peer.recv().await,
            Some(Frame::RstStream {
                stream_id: bad,
                status: rst::PROTOCOL_ERROR
            })
        );
    }
    let f = syn(&mut peer, 5);
    peer.send(f).await;
    let s5 = accept(&mut s_in).await;
    assert_eq!(s5.id(), 5);
    // A stream dropped unreplied is reset with CANCEL.
    drop(s3);
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: rst::CANCEL
        })
    );
    server.goaway().await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 5,
            status: frame::goaway::OK
        })
    );
    // We half-closed after GOAWAY; the session ends when the peer closes.
    assert_eq!(peer.recv().await, None);
    drop(peer);
    timeout(LIMIT, server.closed()).await.expect("not closed");
    drop(s5);
}
