//! Listening sockets and accept loops. One accept loop per bound port; each accepted connection
//! becomes a task (tracked for graceful shutdown) that [`crate::dispatch`] runs. Which ports are
//! bound, and their reference counts, is [`crate::proxy`]'s business.

use crate::context::EngineContext;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod sockopt;

/// Pending-connection queue per listener (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 4096;

/// With `deferAccept`, how long the kernel holds a connection that has sent nothing before
/// handing it over anyway: the shortest period it knows (one SYN-ACK retransmission), so a
/// client of a server-first protocol waits about a second at most.
const DEFER_ACCEPT_SECS: u32 = 1;

/// Binds `port` on all interfaces: dual-stack `[::]` where IPv6 exists (as Node's
/// `server.listen(port)` does), else `0.0.0.0`. Must run inside the proxy runtime's context.
/// `TCP_NODELAY` and keep-alive are set on the listening socket: Linux clones them into every
/// accepted socket, which saves three syscalls per connection (tested below).
/// With `defer_accept` (`deferAccept`), a connection is accepted once its first bytes arrived
/// (`TCP_DEFER_ACCEPT`): no wake-up, and no read that finds nothing, between the handshake and
/// the client's first bytes.
pub fn bind(port: u16, opts: crate::tcp::SocketOptions, defer_accept: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = (|| -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        Ok(s)
    })();
    let (sock, addr) = match v6 {
        Ok(s) => (s, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))),
        Err(_) => {
            (Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?, SocketAddr::from(([0, 0, 0, 0], port)))
        }
    };
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    crate::tcp::apply_socket(&sock, opts);
    if defer_accept {
        sockopt::set_defer_accept(&sock, DEFER_ACCEPT_SECS)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    TcpListener::from_std(sock.into())
}

/// Accepts on `listener` until `stop` fires; each connection is handled on its own task.
pub async fn accept_loop(listener: TcpListener, port: u16, shared: Arc<EngineContext>, stop: CancellationToken) {
    let mut starved = Starved::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if let Some(ended) = starved.ended() {
                        shared.log_warn(format!("accept on port {port} works again ({ended})"));
                    }
                    let sh = shared.clone();
                    shared.tracker.spawn(crate::dispatch::handle(stream, peer, port, sh));
                }
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning; other errors
                    // (a client that reset while queued) concern one connection only.
                    // ENOMEM 12, ENFILE 23, EMFILE 24, ENOBUFS 105.
                    if matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105)) {
                        if starved.failed() {
                            shared.log_warn(format!("accept on port {port} failed: {e}; retrying every 100 ms"));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

/// An episode of failing accepts (out of descriptors or memory): logged once when it starts,
/// and once when it ends, with how long it lasted and how many attempts failed.
#[derive(Default)]
struct Starved {
    since: Option<std::time::Instant>,
    failures: u64,
}

impl Starved {
    /// Counts a failed accept; true for the first of an episode.
    fn failed(&mut self) -> bool {
        self.failures += 1;
        self.since.get_or_insert_with(std::time::Instant::now);
        self.failures == 1
    }

    /// After a successful accept: the summary of the episode that just ended, if one did.
    fn ended(&mut self) -> Option<String> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        Some(format!("{failures} failed attempts over {} ms", since.elapsed().as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyOptions;

    #[test]
    fn starvation_is_reported_once_per_episode() {
        let mut s = Starved::default();
        assert_eq!(s.ended(), None);
        assert!(s.failed());
        assert!(!s.failed());
        assert!(!s.failed());
        assert!(s.ended().is_some_and(|m| m.starts_with("3 failed attempts")));
        assert_eq!(s.ended(), None);
        assert!(s.failed(), "a new episode is reported again");
    }
    use crate::snapshot::Snapshot;
    use arc_swap::ArcSwap;

    /// The task future of every connection is allocated whole, sized by its largest state:
    /// keep it small so idle connections stay cheap (the bench target is ~3 KiB per idle
    /// forwarded connection, both sockets included). Transient states (detection, TLS/HTTP,
    /// connect) are boxed; what remains is mostly the relay and its one timer (~1.1 KB).
    /// The per-connection code relies on accepted sockets inheriting the listener's options.
    #[tokio::test]
    async fn accepted_sockets_inherit_listener_options() {
        let opts = crate::tcp::SocketOptions {
            no_delay: true,
            keep_alive: Some(std::time::Duration::from_secs(7)),
            probes: true,
        };
        let l = bind(0, opts, false).unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let r = socket2::SockRef::from(&s);
        assert!(r.tcp_nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), std::time::Duration::from_secs(7));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), crate::tcp::PROBE_INTERVAL);
        assert_eq!(r.tcp_keepalive_retries().unwrap(), crate::tcp::PROBE_COUNT);
        let plain =
            bind(0, crate::tcp::SocketOptions { no_delay: false, keep_alive: None, probes: false }, false).unwrap();
        let port = plain.local_addr().unwrap().port();
        let _c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (s, _) = plain.accept().await.unwrap();
        assert!(!socket2::SockRef::from(&s).keepalive().unwrap());
    }

    /// `deferAccept`: a connection that has sent nothing is not handed over; its first bytes
    /// make it acceptable. Without the option the handshake alone does.
    #[tokio::test]
    async fn deferred_accept_waits_for_the_first_bytes() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let opts = crate::tcp::SocketOptions { no_delay: true, keep_alive: None, probes: false };
        let l = bind(0, opts, true).unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(early.is_err(), "accepted before any byte arrived");
        c.write_all(b"PROXY").await.unwrap();
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept()).await.unwrap().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"PROXY");

        let l = bind(0, opts, false).unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), l.accept()).await.is_ok());
    }

    #[tokio::test]
    async fn connection_future_stays_small() {
        let o = ProxyOptions::default();
        let sh = Arc::new(EngineContext {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            bridge: None,
            js_calls: crate::js::Calls::new(1, Arc::default()),
            handoffs: Arc::default(),
            backends: Arc::new(crate::upstream::Backends::new(false, &[], &o).unwrap()),
            options: Arc::new(o),
            registry: Arc::default(),
            route_states: Default::default(),
            tls: crate::tls::TlsContext::new(true).unwrap(),
            acme: crate::acme::Acme::new(
                tokio::runtime::Handle::current(),
                CancellationToken::new(),
                Default::default(),
                Arc::new(crate::events::NullSink),
                None,
                None,
            ),
            events: Arc::new(crate::events::NullSink),
            shutdown: CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let fut = crate::dispatch::handle(s, peer, addr.port(), sh);
        let size = std::mem::size_of_val(&fut);
        println!("connection future: {size} bytes");
        assert!(size <= 1200, "connection future is {size} bytes");
    }
}
