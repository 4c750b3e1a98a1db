//! Layer-4 plumbing: the bidirectional relay, socket options, and the peek used for detection.

mod peek;
mod relay;
#[cfg(target_os = "linux")]
mod splice;

pub use peek::{peek_initial, Initial, PeekError};
pub use relay::{relay, RelayEnd};

use socket2::{SockRef, TcpKeepalive};
use std::time::Duration;
use tokio::net::TcpStream;

/// Socket options applied to both sides of a forwarded connection.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    pub no_delay: bool,
    /// `Some(initial delay)` turns SO_KEEPALIVE on.
    pub keep_alive: Option<Duration>,
}

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
        let ka = TcpKeepalive::new().with_time(delay.max(Duration::from_secs(1)));
        let _ = sock.set_tcp_keepalive(&ka);
    }
}

/// Half-closes the write side (sends FIN). Errors mean the peer is gone, which is fine here.
pub fn shutdown_write(stream: &TcpStream) {
    let _ = SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}
