//! HTTP/1.1 on the wire, shared by the client side (the fast path, [`super::h1`]) and the
//! backend side ([`crate::upstream::http1`]): message framing, `Connection` tokens, header
//! lines, buffer sizes, and the per-thread buffer cache.

use super::chunked::Chunked;

/// Size of the read buffers (client side while a request is in flight, backend side).
pub const BUF: usize = 32 * 1024;
/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one head (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// A per-thread cache of read buffers: each request takes its buffers here and gives them
/// back, so the allocator does not return their memory to the kernel and fault it in again on
/// every request (`madvise` and page faults were 7 % of the proxy's CPU per request).
pub mod bufs {
    use super::BUF;
    use std::cell::RefCell;

    /// Buffers kept per thread: enough for the requests in flight at once on a worker.
    const KEEP: usize = 32;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Vec<u8> {
        FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten().unwrap_or_else(|| Vec::with_capacity(BUF))
    }

    pub fn give(mut b: Vec<u8>) {
        if b.capacity() < BUF || b.capacity() > 2 * BUF {
            return;
        }
        b.clear();
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(b);
            }
        });
    }

    /// A buffer that goes back to the cache when dropped.
    pub struct Buf(pub Vec<u8>);

    impl Drop for Buf {
        fn drop(&mut self) {
            give(std::mem::take(&mut self.0));
        }
    }

    impl std::ops::Deref for Buf {
        type Target = Vec<u8>;
        fn deref(&self) -> &Vec<u8> {
            &self.0
        }
    }

    impl std::ops::DerefMut for Buf {
        fn deref_mut(&mut self) -> &mut Vec<u8> {
            &mut self.0
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes (responses without length or chunking).
    UntilClose,
}

impl Framing {
    /// Takes the part of `buf` that belongs to the body; returns its length.
    pub(crate) fn take(&mut self, buf: &[u8]) -> Result<usize, ()> {
        match self {
            Framing::None => Ok(0),
            Framing::Length(left) => {
                let k = (*left).min(buf.len() as u64);
                *left -= k;
                Ok(k as usize)
            }
            Framing::Chunked(c) => c.feed(buf).map_err(|_| ()),
            Framing::UntilClose => Ok(buf.len()),
        }
    }

    pub(crate) fn done(&self) -> bool {
        match self {
            Framing::None => true,
            Framing::Length(left) => *left == 0,
            Framing::Chunked(c) => c.is_done(),
            Framing::UntilClose => false,
        }
    }
}

pub fn tokens(v: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(v).unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty())
}

pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
