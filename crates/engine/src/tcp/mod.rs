//! Layer-4 plumbing: the bidirectional relay, socket options, the peek used for detection, and
//! reading an inbound PROXY protocol header.

mod peek;
mod relay;
#[cfg(target_os = "linux")]
mod splice;
mod wire;

pub use peek::{peek_initial, read_proxy_header, Initial, PeekError, ProxyHeaderError};
pub use relay::{relay, RelayEnd};
pub use wire::Wire;

use socket2::{SockRef, TcpKeepalive};
use std::time::Duration;
use tokio::net::TcpStream;

/// Writes all of `buf` (a PROXY protocol header before the relay starts).
pub async fn write_all(s: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends up to `max` bytes already queued on `s` to `out`, without waiting; how many (0 also
/// when reading failed: the relay finds out).
pub fn read_now(s: &TcpStream, out: &mut Vec<u8>, max: usize) -> usize {
    relay::read_queued(s, out, max).unwrap_or(0)
}

/// Socket options applied to both sides of a forwarded connection.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    pub no_delay: bool,
    /// `Some(initial delay)` turns SO_KEEPALIVE on.
    pub keep_alive: Option<Duration>,
    /// `enableKeepAliveProbes`: after the initial delay, probe every [`PROBE_INTERVAL`] and give
    /// up after [`PROBE_COUNT`] unanswered probes (what upstream asked Node for); otherwise the
    /// kernel's defaults (75 s, 9 probes on Linux).
    pub probes: bool,
}

/// Interval between keep-alive probes with `enableKeepAliveProbes` (upstream's 1 s).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered probes before the connection is dropped with `enableKeepAliveProbes` (upstream's 10).
pub const PROBE_COUNT: u32 = 10;

/// Applies [`SocketOptions`]; failures are ignored (a socket that cannot take an option still works).
pub fn apply(stream: &TcpStream, opts: SocketOptions) {
    apply_socket(&SockRef::from(stream), opts);
}

/// [`apply`] for any socket (listeners included: accepted sockets inherit these on Linux).
pub fn apply_socket(sock: &socket2::Socket, opts: SocketOptions) {
    if opts.no_delay {
        let _ = sock.set_tcp_nodelay(true);
    }
    if let Some(delay) = opts.keep_alive {
        let mut ka = TcpKeepalive::new().with_time(delay.max(Duration::from_secs(1)));
        if opts.probes {
            ka = ka.with_interval(PROBE_INTERVAL).with_retries(PROBE_COUNT);
        }
        let _ = sock.set_tcp_keepalive(&ka);
    }
}

/// Half-closes the write side (sends FIN). Errors mean the peer is gone, which is fine here.
pub fn shutdown_write(stream: &TcpStream) {
    let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}
