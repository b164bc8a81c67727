//! Idle keep-alive connections to replicas, kept for the next request to the same replica.
//!
//! The idle connections are kept per thread: a connection is registered with the I/O driver of
//! the thread that opened it, and Pingora runs one single-threaded runtime per thread (with
//! `work_stealing: false`), so a connection used from another thread would cost a cross-thread
//! wake-up for every read. Per thread there is also no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::default();
}

/// Idle connections per replica, on this thread.
pub struct Pool {
    /// An idle connection older than this is closed, not reused: it stays below the keep-alive
    /// timeouts of common function servers (uvicorn's is 5 s), which would otherwise close it
    /// while a request is on its way.
    max_idle: Duration,
    /// At most this many idle connections per replica.
    max_per_replica: usize,
}

#[derive(Default)]
struct Idle {
    by_replica: HashMap<u64, Vec<(TcpStream, Instant)>>,
    swept: Option<Instant>,
}

impl Pool {
    /// An empty pool.
    pub fn new(max_idle: Duration, max_per_replica: usize) -> Self {
        Pool {
            max_idle,
            max_per_replica,
        }
    }

    /// The most recently used idle connection to `replica` that is still young enough and
    /// has received nothing since its last response. Bytes or an EOF arriving on an idle
    /// connection mean the replica sent more than the response, or closed it: reusing it would
    /// hand those bytes to the next request as its response (as nginx and Pingora do, the check
    /// is the readiness the I/O driver has seen, without a syscall).
    pub fn take(&self, replica: u64) -> Option<TcpStream> {
        IDLE.with_borrow_mut(|idle| {
            self.sweep(idle, Instant::now());
            let conns = idle.by_replica.get_mut(&replica)?;
            let mut cx = Context::from_waker(Waker::noop());
            while let Some((conn, since)) = conns.pop() {
                if since.elapsed() < self.max_idle && conn.poll_read_ready(&mut cx).is_pending() {
                    return Some(conn);
                }
            }
            None
        })
    }

    /// Keeps `conn` for the next request to `replica`. Now and then drops the connections that
    /// have been idle too long, including those of replicas that are gone.
    pub fn put(&self, replica: u64, conn: TcpStream) {
        IDLE.with_borrow_mut(|idle| self.put_in(idle, replica, conn))
    }

    fn put_in(&self, idle: &mut Idle, replica: u64, conn: TcpStream) {
        let now = Instant::now();
        if idle
            .swept
            .is_none_or(|t| now.duration_since(t) > self.max_idle)
        {
            idle.swept = Some(now);
            let max_idle = self.max_idle;
            idle.by_replica.retain(|_, conns| {
                conns.retain(|(_, since)| now.duration_since(*since) < max_idle);
                !conns.is_empty()
            });
        }
        let conns = idle.by_replica.entry(replica).or_default();
        if conns.len() < self.max_per_replica {
            conns.push((conn, now));
        }
    }

    /// Every `max_idle`, closes the connections idle longer than that (including those of
    /// replicas that are gone).
    fn sweep(&self, idle: &mut Idle, now: Instant) {
        if idle
            .swept
            .is_some_and(|t| now.duration_since(t) <= self.max_idle)
        {
            return;
        }
        idle.swept = Some(now);
        let max_idle = self.max_idle;
        idle.by_replica.retain(|_, conns| {
            conns.retain(|(_, since)| now.duration_since(*since) < max_idle);
            !conns.is_empty()
        });
    }

    /// How many idle connections this thread keeps.
    pub fn idle(&self) -> usize {
        IDLE.with_borrow(|i| i.by_replica.values().map(Vec::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuses_young_quiet_connections_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(Duration::from_millis(300), 2);
        let mut accepted = Vec::new();
        for _ in 0..3 {
            pool.put(7, TcpStream::connect(addr).await.unwrap());
            accepted.push(listener.accept().await.unwrap().0);
        }
        assert_eq!(pool.idle(), 2, "capped per replica");
        assert!(pool.take(8).is_none());

        // A replica that sends bytes on an idle connection, or closes it: not reused.
        use tokio::io::AsyncWriteExt;
        let chatty = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        pool.put(9, chatty);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.take(9).is_none(),
            "a connection with unread bytes was reused"
        );

        // Too old: not reused, and swept from replicas nobody asks for.
        pool.put(10, TcpStream::connect(addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(pool.take(7).is_none(), "too old to reuse");
        assert_eq!(
            pool.idle(),
            0,
            "the sweep closed replica 10's stale connection"
        );
    }
}
