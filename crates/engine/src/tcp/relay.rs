//! The bidirectional relay of a forwarded connection: both directions in one task, driven by
//! readiness with `try_read`/`try_write`.
//!
//! Memory: bytes are read into a per-worker-thread scratch buffer and written straight on; only
//! what the receiver cannot take at once is copied into a per-direction heap buffer, which is
//! freed as soon as it drains. An idle connection therefore holds no buffer at all (the target
//! is HAProxy's ~3 KiB per idle forwarded connection, with both sockets included).
//!
//! Half-close: when one side sends FIN, pending bytes are flushed and the FIN is passed on. With
//! `half_open` the other direction keeps flowing until it ends too; without it (upstream's
//! default) the connection is then closed.

use super::shutdown_write;
use crate::conn::ConnRecord;
use socket2::SockRef;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Scratch buffer size, per worker thread (not per connection): up to 256 KiB per read, so a
/// socket queue that holds more than one 64 KiB loopback segment drains in one syscall.
const SCRATCH: usize = 256 * 1024;
/// Reads per direction before yielding, so one busy connection cannot starve the worker.
const BUDGET: usize = 16;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client closed first (both sides are closed now).
    ClientClosed,
    /// The backend closed first.
    BackendClosed,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the backend failed.
    BackendError,
}

#[derive(Default)]
struct Half {
    pending: Vec<u8>,
    off: usize,
    eof: bool,
    shut: bool,
    done: bool,
    /// Bytes moved so far in this direction (bulk transfers switch to `splice`).
    moved: u64,
    /// Linux: the pipe holding bytes on their way (only while it holds some).
    #[cfg(target_os = "linux")]
    pipe: Option<super::splice::Pipe>,
    #[cfg(target_os = "linux")]
    in_pipe: usize,
}

/// After this many bytes in one direction the relay moves that direction's bytes with
/// `splice(2)` (Linux): request/response traffic keeps the one-syscall copy path, while bulk
/// transfers stop copying through user space.
#[cfg(target_os = "linux")]
const SPLICE_AFTER: u64 = 256 * 1024;

enum Fault {
    Src,
    Dst,
}

enum Step {
    Moved,
    Eof,
    WouldBlock,
    Fault(Fault),
}

/// Moves bytes from `src` to `dst` until `src` ends (Ready(Ok)) or an error (Ready(Err)).
fn poll_half(
    cx: &mut Context<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    h: &mut Half,
    rec: &ConnRecord,
    inbound: bool,
    half_open: bool,
) -> Poll<Result<(), Fault>> {
    for _ in 0..BUDGET {
        while h.off < h.pending.len() {
            ready!(dst.poll_write_ready(cx)).map_err(|_| Fault::Dst)?;
            match dst.try_write(&h.pending[h.off..]) {
                Ok(n) => h.off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(Err(Fault::Dst)),
            }
        }
        if !h.pending.is_empty() {
            // Drained: give the memory back.
            h.pending = Vec::new();
            h.off = 0;
        }
        #[cfg(target_os = "linux")]
        if let Some(pipe) = &h.pipe {
            while h.in_pipe > 0 {
                ready!(dst.poll_write_ready(cx)).map_err(|_| Fault::Dst)?;
                let len = h.in_pipe;
                match dst.try_io(Interest::WRITABLE, || pipe.drain(dst, len)) {
                    Ok(n) => h.in_pipe -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(Err(Fault::Dst)),
                }
            }
            // Drained: the pipe goes back to the pool.
            if let Some(p) = h.pipe.take() {
                p.give_back();
            }
        }
        if h.eof {
            // Half-open: pass the FIN on and keep the other direction. Otherwise the relay ends
            // now and closing the sockets sends the FINs (no extra syscalls per connection).
            if half_open && !h.shut {
                shutdown_write(dst);
                h.shut = true;
            }
            return Poll::Ready(Ok(()));
        }
        ready!(src.poll_read_ready(cx)).map_err(|_| Fault::Src)?;
        #[cfg(target_os = "linux")]
        if h.moved >= SPLICE_AFTER {
            if let Ok(pipe) = super::splice::Pipe::take() {
                match src.try_io(Interest::READABLE, || pipe.fill(src)) {
                    Ok(0) => {
                        pipe.give_back();
                        h.eof = true;
                    }
                    Ok(n) => {
                        count(rec, inbound, n);
                        h.moved += n as u64;
                        h.in_pipe = n;
                        h.pipe = Some(pipe);
                    }
                    // Readiness is cleared: the next round waits for the next event.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give_back(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => pipe.give_back(),
                    Err(_) => return Poll::Ready(Err(Fault::Src)),
                }
                continue;
            }
            // No pipe to be had (descriptor limit): keep copying.
        }
        let step = SCRATCH_BUF.with(|b| {
            let mut b = b.borrow_mut();
            match read_draining(src, &mut b[..]) {
                Ok(0) => Step::Eof,
                Ok(n) => {
                    count(rec, inbound, n);
                    h.moved += n as u64;
                    match dst.try_write(&b[..n]) {
                        Ok(m) if m == n => Step::Moved,
                        Ok(m) => {
                            h.pending = b[m..n].to_vec();
                            Step::Moved
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            h.pending = b[..n].to_vec();
                            Step::Moved
                        }
                        Err(_) => Step::Fault(Fault::Dst),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::WouldBlock,
                Err(_) => Step::Fault(Fault::Src),
            }
        });
        match step {
            Step::Moved | Step::WouldBlock => {}
            Step::Eof => h.eof = true,
            Step::Fault(f) => return Poll::Ready(Err(f)),
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Counts moved bytes on the connection record and marks it active.
fn count(rec: &ConnRecord, inbound: bool, n: usize) {
    let counter = if inbound { &rec.bytes_in } else { &rec.bytes_out };
    counter.fetch_add(n as u64, Ordering::Relaxed);
    rec.touch();
}

/// Reads like `try_read`, but a short read also clears the socket's read readiness, as tokio's
/// own `poll_read` does: with edge-triggered epoll a read that does not fill the buffer has
/// drained the socket, so the next attempt waits for the next event instead of costing a
/// `recv` that fails with `EAGAIN` (one syscall per message). Readiness that arrived after the
/// read is never lost: tokio clears it only if no new event came in meanwhile.
fn read_draining(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let sock = SockRef::from(src);
    let mut got = 0;
    let r = src.try_io(Interest::READABLE, || {
        let n = (&*sock).read(buf)?;
        if n > 0 && n < buf.len() {
            got = n;
            // Makes `try_io` clear the readiness; the bytes are returned below.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// Appends up to `max` bytes already queued on `src` to `out`, without waiting (through the
/// worker's scratch buffer: nothing to zero). When the runtime has seen the socket readable the
/// read goes through [`read_draining`], so a short read clears the readiness and the relay's
/// first read waits for the next event instead of failing with `EAGAIN`; right after accept the
/// runtime may not know yet that bytes are queued, and a plain non-blocking `recv` looks anyway.
pub(super) fn read_queued(src: &TcpStream, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    SCRATCH_BUF.with(|b| {
        let mut b = b.borrow_mut();
        let buf = &mut b[..max.min(SCRATCH)];
        let mut asked = false;
        let r = src.try_io(Interest::READABLE, || {
            asked = true;
            Ok(())
        });
        let n = match r {
            Ok(()) if asked => read_draining(src, buf)?,
            _ => raw_recv(src, buf)?,
        };
        out.extend_from_slice(&buf[..n]);
        Ok(n)
    })
}

/// One non-blocking `recv`, whatever the runtime knows of the socket's readiness.
fn raw_recv(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        Ok(rustix::net::recv(src, buf, rustix::net::RecvFlags::DONTWAIT)?.0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        (&*SockRef::from(src)).read(buf)
    }
}

/// Relays until the connection is over; returns who ended it.
pub async fn relay(client: &TcpStream, backend: &TcpStream, rec: &ConnRecord, half_open: bool) -> RelayEnd {
    let mut up = Half::default(); // client → backend
    let mut down = Half::default(); // backend → client
    let mut first_close: Option<RelayEnd> = None;
    poll_fn(|cx| {
        if !up.done {
            match poll_half(cx, client, backend, &mut up, rec, true, half_open) {
                Poll::Ready(Ok(())) => {
                    up.done = true;
                    first_close.get_or_insert(RelayEnd::ClientClosed);
                }
                Poll::Ready(Err(Fault::Src)) => return Poll::Ready(RelayEnd::ClientError),
                Poll::Ready(Err(Fault::Dst)) => return Poll::Ready(RelayEnd::BackendError),
                Poll::Pending => {}
            }
        }
        if !down.done {
            match poll_half(cx, backend, client, &mut down, rec, false, half_open) {
                Poll::Ready(Ok(())) => {
                    down.done = true;
                    first_close.get_or_insert(RelayEnd::BackendClosed);
                }
                Poll::Ready(Err(Fault::Src)) => return Poll::Ready(RelayEnd::BackendError),
                Poll::Ready(Err(Fault::Dst)) => return Poll::Ready(RelayEnd::ClientError),
                Poll::Pending => {}
            }
        }
        match first_close {
            // Both sockets are dropped (closed, FIN) by the caller right after.
            Some(end) if (up.done && down.done) || !half_open => Poll::Ready(end),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{IpLimits, Registry};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// 6 MiB each way at once: the first 256 KiB per direction go through the copy path, the
    /// rest through splice (Linux); every byte arrives in order and is counted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_intact_and_counted() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let reg = Arc::new(Registry::default());
        let guard = reg.open("127.0.0.1".parse().unwrap(), 1, 80, IpLimits { max_per_ip: None, rate_per_minute: None });
        let guard = guard.unwrap();
        let rec = guard.rec.clone();
        let relay_task = tokio::spawn(async move {
            let end = relay(&proxy_client, &proxy_backend, &rec, false).await;
            (end, rec)
        });
        const LEN: usize = 6 * 1024 * 1024;
        let up = pattern(LEN, 7);
        let down = pattern(LEN, 91);
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = backend.split();
        let (got_down, got_up, _, _) = tokio::join!(
            async {
                let mut v = vec![0u8; LEN];
                cr.read_exact(&mut v).await.unwrap();
                v
            },
            async {
                let mut v = vec![0u8; LEN];
                br.read_exact(&mut v).await.unwrap();
                v
            },
            async { cw.write_all(&up).await.unwrap() },
            async { bw.write_all(&down).await.unwrap() },
        );
        assert!(got_up == up, "client → backend bytes differ");
        assert!(got_down == down, "backend → client bytes differ");
        // A small message after the bulk (splice mode) still goes through.
        cw.write_all(b"tail").await.unwrap();
        let mut tail = [0u8; 4];
        br.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"tail");
        drop(client);
        let (end, rec) = tokio::time::timeout(std::time::Duration::from_secs(5), relay_task).await.unwrap().unwrap();
        assert_eq!(end, RelayEnd::ClientClosed);
        assert_eq!(rec.bytes_in.load(Ordering::Relaxed), LEN as u64 + 4);
        assert_eq!(rec.bytes_out.load(Ordering::Relaxed), LEN as u64);
        drop(guard);
    }
}
