//! Moving a client's socket to the runtime of the thread that serves it.
//!
//! With `work_stealing: false`, Pingora runs one single-threaded tokio runtime per thread. Its
//! accept loop runs on one of them, so every accepted socket is registered with that runtime's
//! I/O driver, and the connection's task is then spawned on a runtime picked at random. For the
//! connections that land elsewhere, every read and write readiness crosses threads: an eventfd
//! write and a wake-up of the accepting thread per event. Registering a duplicate of the socket
//! with the serving thread's own driver, once per connection, keeps each connection on one
//! thread, as nginx's workers do.

use std::os::fd::{AsRawFd, BorrowedFd};

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};

/// The same connection, registered with the current thread's runtime; `None` if it could not
/// be moved (the connection is then closed; it only happens when the process is out of file
/// descriptors).
pub fn to_this_thread(io: Stream) -> Option<Stream> {
    if !io.as_any().is::<L4Stream>() {
        return Some(io); // not a plain TCP stream (never the case here): leave it as it is
    }
    let l4 = io.into_any().downcast::<L4Stream>().ok()?;
    let fd = duplicate(&l4)
        .map_err(|e| log::warn!("could not move a client connection: {e}"))
        .ok()?;
    // The address Pingora read at accept (asking again fails once the client has reset).
    let peer = l4.get_socket_digest().and_then(|d| d.peer_addr().cloned());
    // Closing the original fd deregisters it from the accepting thread; the socket stays open.
    drop(l4);
    let std = std::net::TcpStream::from(fd);
    let tcp = tokio::net::TcpStream::from_std(std).ok()?;
    let mut moved = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(moved.as_raw_fd());
    if let Some(peer) = peer {
        let _ = digest.peer_addr.set(Some(peer));
    }
    moved.set_socket_digest(digest);
    Some(Box::new(moved))
}

/// A new fd for the socket of `l4`.
#[allow(unsafe_code)]
fn duplicate(l4: &L4Stream) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: the fd belongs to `l4`, which stays open for the whole borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) };
    borrowed.try_clone_to_owned()
}
