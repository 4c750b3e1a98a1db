//! Zero-copy moves for bulk transfers (Linux): socket → pipe → socket with `splice(2)`, so the
//! bytes never cross into user space (HAProxy's `option splice-auto` idea).
//!
//! A pipe is held only while it holds bytes: a drained pipe goes back to a small per-thread pool,
//! so an idle connection keeps no pipe and no file descriptors beyond its two sockets.

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Capacity asked for each pipe (the kernel may grant less; 64 KiB is the default).
const PIPE_SIZE: usize = 256 * 1024;
/// Idle pipes kept per worker thread for reuse.
const POOL_MAX: usize = 64;

/// A pipe: read end, write end.
pub struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// A pipe from this thread's pool, or a new one.
    pub fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let (rd, wr) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Larger pipes mean fewer syscalls per GB; a refusal (limits) keeps the default size.
        let _ = fcntl_setpipe_size(&wr, PIPE_SIZE);
        Ok(Pipe { rd, wr })
    }

    /// Returns an empty pipe to this thread's pool (or closes it when the pool is full).
    pub fn give_back(self) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(self);
            }
        });
    }

    /// Moves up to the pipe's capacity from `src` into the pipe. `Ok(0)` is the end of `src`.
    pub fn fill(&self, src: impl AsFd) -> io::Result<usize> {
        Ok(splice(src, None, &self.wr, None, PIPE_SIZE, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
    }

    /// Moves up to `len` bytes from the pipe into `dst`.
    pub fn drain(&self, dst: impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(&self.rd, None, dst, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn moves_bytes_between_sockets_and_reuses_pipes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        a.write_all(b"hello splice").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let p = Pipe::take().unwrap();
        let n = p.fill(&b).unwrap();
        assert_eq!(n, 12);
        assert_eq!(p.drain(&c, n).unwrap(), 12);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
        // Nothing more to read: a non-blocking pipe and socket give WouldBlock, not a hang.
        b.set_nonblocking(true).unwrap();
        assert_eq!(p.fill(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        p.give_back();
        assert_eq!(POOL.with(|p| p.borrow().len()), 1);
        let _again = Pipe::take().unwrap();
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
        // The end of the source is Ok(0).
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(_again.fill(&b).unwrap(), 0);
    }
}
