//! Response bytes toward an HTTP/2 client, under a budget per connection.
//!
//! The `h2` crate buffers what a stream sends until the connection writes it, up to its send
//! buffer per stream ([`STREAM_BUFFER`]). A client that opens its flow-control windows and then
//! reads nothing would make that buffer fill on every one of its streams. So the streams of a
//! connection share a budget ([`CONN_BUDGET`]): a stream queues response bytes only while the
//! bytes queued and not yet written, across all streams, stay within it; past it the stream
//! stops polling its backend body (so the backend connection is not read either) until the
//! client reads.
//!
//! Written bytes are counted exactly: [`Watched`] sits between `h2` and the client stream and
//! follows the frames `h2` writes (9-byte headers, then payloads), crediting DATA payloads to
//! their stream. A stream that ends waits until its bytes are written (or the client resets
//! it, when `h2` drops its queue); only then does its share leave the budget.

use bytes::Bytes;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Response bytes one connection may have queued in `h2` and not yet written to its client.
pub(super) const CONN_BUDGET: usize = 1024 * 1024;
/// `h2`'s send buffer per stream: what one stream may have queued.
pub(super) const STREAM_BUFFER: usize = 256 * 1024;
/// Streams waiting for room are woken once at least this much is free.
const WAKE_ROOM: usize = 64 * 1024;

/// The connection's budget: bytes queued per stream, and who waits for room.
#[derive(Default)]
pub(super) struct SendBudget {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queued: usize,
    streams: HashMap<u32, Queue>,
    waiting: Vec<Waker>,
}

#[derive(Default)]
struct Queue {
    queued: usize,
    /// The stream's task, waiting for its last bytes to be written.
    flushed: Option<Waker>,
}

impl SendBudget {
    /// The connection's lock. Only the connection's own task takes it (streams are polled in it),
    /// so it is never contended; a poisoned lock still holds consistent counts.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps the client stream so that written DATA payloads are credited to their streams.
    pub(super) fn watch<IO>(self: &Arc<Self>, io: IO) -> Watched<IO> {
        Watched { io, budget: self.clone(), scan: Scan::default() }
    }

    /// Bytes queued and not yet written, across all streams.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().queued
    }

    fn credit(inner: &mut Inner, stream: u32, n: usize) {
        let Some(q) = inner.streams.get_mut(&stream) else { return };
        let n = n.min(q.queued);
        q.queued -= n;
        inner.queued -= n;
        if q.queued == 0 {
            if let Some(w) = q.flushed.take() {
                w.wake();
            }
        }
    }
}

/// One stream's share of its connection's budget; what is still queued leaves the budget when
/// this is dropped (the stream ended, or `h2` dropped its queue on a reset).
pub(super) struct Share {
    budget: Arc<SendBudget>,
    stream: u32,
}

impl Share {
    pub(super) fn new(budget: Arc<SendBudget>, stream: u32) -> Share {
        budget.lock().streams.entry(stream).or_default();
        Share { budget, stream }
    }

    /// Room left in the connection's budget, once there is some.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<usize> {
        let mut inner = self.budget.lock();
        if inner.queued < CONN_BUDGET {
            return Poll::Ready(CONN_BUDGET - inner.queued);
        }
        if !inner.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            inner.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn add(&self, n: usize) {
        let mut inner = self.budget.lock();
        inner.queued += n;
        inner.streams.entry(self.stream).or_default().queued += n;
    }

    /// Ready once every byte this stream queued has been written.
    fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.budget.lock();
        match inner.streams.get_mut(&self.stream) {
            Some(q) if q.queued > 0 => {
                q.flushed = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Streams a response body under flow control and the connection's budget; trailers end it
    /// when present. Returns once the client has every byte (or reset the stream).
    pub(super) async fn send_body<B>(&self, send: &mut h2::SendStream<Bytes>, mut body: B)
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        loop {
            let frame = poll_fn(|tcx| {
                if send.poll_reset(tcx).is_ready() {
                    return Poll::Ready(Err(()));
                }
                Pin::new(&mut body).poll_frame(tcx).map(Ok)
            })
            .await;
            let frame = match frame {
                Err(()) => return, // reset by the client
                Ok(None) => {
                    if send.send_data(Bytes::new(), true).is_ok() {
                        self.flushed(send).await;
                    }
                    return;
                }
                Ok(Some(Err(_))) => {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return;
                }
                Ok(Some(Ok(f))) => f,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    while !data.is_empty() {
                        send.reserve_capacity(data.len());
                        let granted = match poll_fn(|tcx| send.poll_capacity(tcx)).await {
                            Some(Ok(n)) => n,
                            _ => return, // the stream is gone
                        };
                        if granted == 0 {
                            continue;
                        }
                        let room = poll_fn(|tcx| {
                            if send.poll_reset(tcx).is_ready() {
                                return Poll::Ready(None);
                            }
                            self.poll_room(tcx).map(Some)
                        })
                        .await;
                        let Some(room) = room else { return };
                        let chunk = data.split_to(granted.min(room).min(data.len()));
                        self.add(chunk.len());
                        if send.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        if send.send_trailers(trailers).is_ok() {
                            self.flushed(send).await;
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Waits until this stream's bytes are written, or the client reset it.
    async fn flushed(&self, send: &mut h2::SendStream<Bytes>) {
        poll_fn(|tcx| {
            if self.poll_flushed(tcx).is_ready() || send.poll_reset(tcx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        if let Some(q) = inner.streams.remove(&self.stream) {
            inner.queued -= q.queued;
        }
        wake_waiting(&mut inner);
    }
}

fn wake_waiting(inner: &mut Inner) {
    if !inner.waiting.is_empty() && inner.queued + WAKE_ROOM <= CONN_BUDGET {
        for w in inner.waiting.drain(..) {
            w.wake();
        }
    }
}

/// Where the writer is in the frames `h2` writes.
#[derive(Default)]
struct Scan {
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The stream of the current frame when it is DATA, else 0.
    data: u32,
}

impl Scan {
    /// Follows `bytes` written in order; DATA payload bytes are credited to their streams.
    fn feed(&mut self, mut bytes: &[u8], budget: &SendBudget) {
        let mut inner: Option<MutexGuard<'_, Inner>> = None;
        while !bytes.is_empty() {
            if self.left == 0 {
                let take = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have == 9 {
                    self.have = 0;
                    let h = &self.head;
                    self.left = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    self.data = if h[3] == 0 { stream } else { 0 };
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            self.left -= take;
            bytes = &bytes[take..];
            if self.data != 0 {
                let g = inner.get_or_insert_with(|| budget.lock());
                SendBudget::credit(g, self.data, take);
            }
        }
        if let Some(mut g) = inner {
            wake_waiting(&mut g);
        }
    }
}

/// The client stream as `h2` sees it: written DATA payloads are credited to the budget.
pub(super) struct Watched<IO> {
    io: IO,
    budget: Arc<SendBudget>,
    scan: Scan,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.scan.feed(&buf[..n.min(buf.len())], &this.budget);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                this.scan.feed(&b[..take], &this.budget);
                left -= take;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut f = vec![(payload >> 16) as u8, (payload >> 8) as u8, payload as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + payload, 0xab);
        f
    }

    /// DATA payloads are credited to their stream however the writes cut the frames; other
    /// frames and unknown streams credit nothing.
    #[test]
    fn credits_data_payloads_across_any_cut() {
        let mut wire = Vec::new();
        wire.extend(frame(4, 0, 6)); // SETTINGS
        wire.extend(frame(0, 1, 1000));
        wire.extend(frame(1, 3, 40)); // HEADERS
        wire.extend(frame(0, 3, 700));
        wire.extend(frame(0, 5, 300)); // a stream the budget does not know
        wire.extend(frame(0, 1, 24));
        for cut in [1usize, 2, 7, 9, 10, 64, 1000, wire.len()] {
            let budget = Arc::new(SendBudget::default());
            let one = Share::new(budget.clone(), 1);
            let three = Share::new(budget.clone(), 3);
            one.add(1024);
            three.add(800);
            assert_eq!(budget.queued(), 1824);
            let mut scan = Scan::default();
            for piece in wire.chunks(cut) {
                scan.feed(piece, &budget);
            }
            assert_eq!(budget.queued(), 100, "cut {cut}");
            drop(three);
            assert_eq!(budget.queued(), 0, "cut {cut}");
            drop(one);
        }
    }
}
