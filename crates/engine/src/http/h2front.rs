//! The HTTP/2 front end: client connections that speak HTTP/2 (ALPN `h2`, or the prior-knowledge
//! preface on a plain port), served on the `h2` crate.
//!
//! Every stream of a connection is polled inside the connection's own task (no task per stream):
//! the streams run first, then the connection writes what they queued, so the answers of backends
//! that replied together leave in one TLS record and one syscall. Requests go through the same
//! routing and forwarding as hyper's requests ([`super::handle_inner`]); bodies stream both ways
//! under HTTP/2 flow control, trailers included. A stream the client resets drops its request at
//! once (a backend connection waiting for an answer is freed).
//!
//! Settings are hyper's server defaults: 1 MiB stream and connection windows, 16 KiB frames, 200
//! concurrent streams, 16 KiB header lists, at most 1024 streams reset for local errors; the send
//! buffer per stream is smaller (256 KiB), and all streams of a connection share a budget of
//! response bytes queued and not yet written ([`super::h2send`]). Responses without a `date` header get one (hyper did the same).
//! A stream that arrives already reset does no backend work; a client that resets too many of
//! its streams ([`RESET_MIN`], [`RESET_SHARE_PERCENT`]) gets GOAWAY `ENHANCE_YOUR_CALM`.

use super::h2send::{SendBudget, Share, STREAM_BUFFER};
use super::{error_response, handle_inner, headers, BoxError, Counted, HttpConn};
use crate::conn::Termination;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{header, Request, Response};
use hyper::body::{Body, Frame};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_STREAMS: u32 = 200;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_LOCAL_RESETS: usize = 1024;
/// Rapid-reset budget: once a connection's client has reset at least this many streams...
const RESET_MIN: u32 = 100;
/// ...and at least this share (in percent) of all its streams, it gets GOAWAY
/// `ENHANCE_YOUR_CALM` (Envoy's premature-reset rule).
const RESET_SHARE_PERCENT: u32 = 50;

/// Streams of one connection and how many of them its client reset.
#[derive(Default)]
struct ResetBudget {
    streams: AtomicU32,
    resets: AtomicU32,
}

impl ResetBudget {
    fn reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    fn exceeded(&self) -> bool {
        let (r, s) = (self.resets.load(Ordering::Relaxed), self.streams.load(Ordering::Relaxed));
        r >= RESET_MIN && u64::from(r) * 100 >= u64::from(s) * u64::from(RESET_SHARE_PERCENT)
    }
}

/// Serves one HTTP/2 client connection until it closes.
///
/// Not an `async fn`: its arguments would stay in the future after the handshake took them (the
/// TLS stream twice per connection); the handshake is boxed and freed once done.
pub(super) fn serve<IO>(io: Counted<IO>, cx: Arc<HttpConn>) -> impl Future<Output = Termination> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sending = Arc::new(SendBudget::default());
    let io = sending.watch(io);
    let handshake = Box::pin(
        h2::server::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(STREAM_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
            .handshake::<_, Bytes>(io),
    );
    async move {
        let mut conn = match handshake.await {
            Ok(c) => c,
            Err(_) => return Termination::ClientError,
        };
        // Streams are polled with the connection until it closes.
        let mut streams: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>> = FuturesUnordered::new();
        let mut accepting = true;
        let budget = Arc::new(ResetBudget::default());
        poll_fn(|tcx| loop {
            // Streams first: what they send is queued before the connection writes.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(tcx) {}
            if accepting && budget.exceeded() {
                // Rapid reset: no new streams; the ones in flight may finish.
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                accepting = false;
            }
            if accepting {
                match conn.poll_accept(tcx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        budget.streams.fetch_add(1, Ordering::Relaxed);
                        let share = Share::new(sending.clone(), respond.stream_id().into());
                        streams.push(Box::pin(stream(req, respond, cx.clone(), budget.clone(), share)));
                        continue; // polls the new stream, then accepts again
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Termination::ClientError),
                    Poll::Ready(None) => accepting = false,
                    Poll::Pending => return Poll::Pending,
                }
            }
            // No new streams (the client said GOAWAY, or left): the connection still carries the
            // streams in flight until they end (it closes once they have).
            return match conn.poll_closed(tcx) {
                Poll::Ready(Ok(())) => Poll::Ready(Termination::ClientClosed),
                Poll::Ready(Err(_)) => Poll::Ready(Termination::ClientError),
                Poll::Pending => Poll::Pending,
            };
        })
        .await
    }
}

/// One request and its response.
async fn stream(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    cx: Arc<HttpConn>,
    budget: Arc<ResetBudget>,
    share: Share,
) {
    // A stream that arrived already reset does no backend work.
    if poll_fn(|tcx| Poll::Ready(respond.poll_reset(tcx).is_ready())).await {
        budget.reset();
        return;
    }
    let mut serving = crate::conn::InFlight::new(&cx.rec, &cx.sh.registry);
    let info = serving.logging().then(|| super::access_info(&req));
    // A response to HEAD has no content (RFC 9113 §8.1.1), whatever the answer's body.
    let head_request = req.method() == http::Method::HEAD;
    let req = req.map(RequestBody);
    let mut served = super::Served::default();
    // In a block: the request's future (and its borrow of `route`) ends with it.
    let resp = {
        let answer = handle_inner(req, &cx, None, &mut served);
        let mut answer = std::pin::pin!(answer);
        // A stream the client resets ends here, dropping the request (and its backend connection).
        poll_fn(|tcx| {
            if let Poll::Ready(r) = answer.as_mut().poll(tcx) {
                return Poll::Ready(Some(r));
            }
            match respond.poll_reset(tcx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    let Some(resp) = resp else {
        budget.reset();
        return;
    };
    let (mut head, body) = resp.unwrap_or_else(error_response).into_parts();
    serving.set_route(served.route.take());
    serving.set_status(head.status.as_u16());
    if let Some(mut info) = info {
        info.backend = served.backend.take();
        serving.describe(info, 0);
    }
    // HTTP/1.1 backends and route header templates may still name connection-specific fields.
    headers::strip_connection_specific(&mut head.headers);
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, date::now());
    }
    let end = head_request || body.is_end_stream();
    let Ok(mut send) = respond.send_response(Response::from_parts(head, ()), end) else { return };
    if !end {
        share.send_body(&mut send, body).await;
    }
}

/// A request body read from the client, giving its flow-control window back as it is consumed.
struct RequestBody(h2::RecvStream);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let s = &mut self.0;
        match s.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = s.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        match s.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// The `date` header value, formatted once per second.
mod date {
    use http::HeaderValue;
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }

    pub fn now() -> HeaderValue {
        let at = SystemTime::now();
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_none() {
                *c = (secs, HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok());
            }
            c.1.clone().unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
        })
    }

    #[cfg(test)]
    mod tests {
        /// An IMF-fixdate (RFC 9110 §5.6.7) of now, the same value within a second.
        #[test]
        fn imf_fixdate_of_now() {
            let v = super::now();
            let s = v.to_str().unwrap();
            assert_eq!(s.len(), "Thu, 26 Nov 2026 05:13:49 GMT".len());
            assert!(s.ends_with(" GMT"));
            let t = httpdate::parse_http_date(s).unwrap();
            let ago = std::time::SystemTime::now().duration_since(t).unwrap();
            assert!(ago.as_secs() <= 2, "{s} is {ago:?} old");
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// What every HTTP/2 connection holds besides its stream and h2's own state stays small.
    #[test]
    fn connection_state_stays_small() {
        type Tls = tokio_rustls::server::TlsStream<crate::tcp::Wire>;
        fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let conn = std::mem::size_of::<
            h2::server::Connection<super::super::h2send::Watched<super::Counted<Tls>>, bytes::Bytes>,
        >();
        let serve = future_size(super::serve::<Tls>);
        println!("h2 connection {conn} B, serve future {serve} B");
        // The connection once (not the arguments again, nor the finished handshake).
        assert!(serve <= conn + 512, "serve future is {serve} bytes (connection {conn})");
    }
}
