//! The engine's one module with unsafe code: `TCP_DEFER_ACCEPT`, a listening-socket option that
//! neither `socket2` nor `rustix` offers (std's `set_deferaccept` is unstable), set with one
//! `setsockopt(2)` call. Invariants of that call: the descriptor is borrowed from a live socket
//! for the duration of the call, and the value pointer and length describe a `c_int` on the
//! stack that outlives it; the kernel only reads from it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Sets `TCP_DEFER_ACCEPT` on a listening socket: the kernel hands a connection to `accept`
/// once its first bytes arrived, or after about `secs` seconds (it then accepts the connection
/// on the client's next ACK). `secs == 0` turns it off. Linux only; elsewhere a no-op.
pub fn set_defer_accept(sock: &impl AsFd, secs: u32) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let value: libc::c_int = secs.min(i32::MAX as u32) as libc::c_int;
        // SAFETY: see the module header: a live descriptor, and a pointer to `value` with its
        // exact size, read by the kernel during the call only.
        let r = unsafe {
            libc::setsockopt(
                sock.as_fd().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (sock, secs);
    Ok(())
}
