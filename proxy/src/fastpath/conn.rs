//! One client connection of the fast path: its buffers, reading with an idle timeout that
//! does not cost a timer per read, and noticing a client that goes away.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

use super::{CLIENT_TIMEOUT, MAX_HEAD, READ_CHUNK};

/// One client connection's buffers.
pub(super) struct Conn {
    pub(super) io: Stream,
    /// Bytes read from the client and not yet forwarded.
    pub(super) buf: Vec<u8>,
    /// The request as it goes to the function.
    pub(super) out: Vec<u8>,
    /// The response as it comes from the function.
    pub(super) resp: Vec<u8>,
    /// A response head as the client gets it (normalised).
    pub(super) head: Vec<u8>,
    pub(super) client_ip: String,
    /// Fires when the connection may have been idle for [`CLIENT_TIMEOUT`]; checked against
    /// `active` and pushed back. One timer per connection, not one per read: arming a timer
    /// on an empty timer wheel wakes the runtime's driver with a syscall.
    pub(super) idle: Pin<Box<Sleep>>,
    /// When the connection last received bytes or finished a response, or opened.
    pub(super) active: Instant,
    /// Resolves when the server shuts down.
    pub(super) stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    pub(super) shutdown: ShutdownWatch,
}

// === impl Conn ===

impl Conn {
    /// Reads more of the client's bytes into `buf`; `Err` when the client is gone, silent for
    /// too long, or the server shuts down while no request is under way.
    pub(super) async fn read_more(&mut self) -> Result<(), ()> {
        self.buf.reserve(READ_CHUNK);
        let between_requests = self.buf.is_empty();
        loop {
            tokio::select! {
                biased;
                r = self.io.read_buf(&mut self.buf) => return match r {
                    Ok(n) if n > 0 => {
                        self.active = Instant::now();
                        Ok(())
                    }
                    _ => Err(()),
                },
                _ = self.stop.as_mut(), if between_requests => return Err(()),
                _ = self.idle.as_mut() => {
                    let deadline = self.active + CLIENT_TIMEOUT;
                    if Instant::now() >= deadline {
                        return Err(());
                    }
                    self.idle.as_mut().reset(deadline.into());
                }
            }
        }
    }
}

pub(super) async fn write_flush(io: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Resolves when the client goes away while its request is held. Its next pipelined request,
/// if it sends one meanwhile, is kept in `buf`.
pub(super) async fn client_gone(io: &mut Stream, buf: &mut Vec<u8>) {
    loop {
        if buf.len() >= MAX_HEAD {
            std::future::pending::<()>().await;
        }
        buf.reserve(READ_CHUNK);
        match io.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Resolves once the server is shutting down.
pub(super) async fn shutting_down(rx: &mut ShutdownWatch) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
