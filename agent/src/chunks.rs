//! Reading a pipe or terminal in chunks, for the threads that copy a process's output.

use std::io::Read as _;
use std::os::fd::OwnedFd;

/// The most read at once: what one output message carries at most.
pub const CHUNK: usize = 32 * 1024;

/// Reads `fd` until its end (or an error: EIO is how a terminal's output ends), handing
/// each chunk to `each`; stops early when `each` returns false.
pub fn read_chunks(fd: OwnedFd, mut each: impl FnMut(Vec<u8>) -> bool) {
    let mut f = std::fs::File::from(fd);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !each(buf[..n].to_vec()) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_arrive_in_order_until_the_end_or_a_stop() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                std::io::Write::write_all(&mut std::fs::File::from(w), &data).expect("write")
            })
        };
        let mut got = Vec::new();
        read_chunks(r, |c| {
            assert!(c.len() <= CHUNK);
            got.extend(c);
            true
        });
        writer.join().expect("writer");
        assert_eq!(got, data);

        let (r, w) = nix::unistd::pipe().expect("pipe");
        std::io::Write::write_all(&mut std::fs::File::from(w), b"abc").expect("write");
        let mut calls = 0;
        read_chunks(r, |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1, "a false answer stops the reading");
    }
}
