//! The gateway's fast path: a Pingora [`ServerApp`] that forwards plain HTTP/1.1 requests for
//! `/gateway/{name}/...` itself and hands everything else to Pingora's HTTP proxy
//! ([`Gateway`](crate::gateway::Gateway) under `pingora_proxy::HttpProxy`).
//!
//! Pingora's proxy is general: per request it builds header maps, runs a downstream and an
//! upstream task joined by a channel, and keeps a 64 KiB read buffer and a large future per
//! connection. The common request here is small and simple, so the fast path parses the head
//! in place (`httparse`), writes the rewritten head and the body to a pooled connection in one
//! write, and passes the response bytes through as they come, following their framing only to
//! know where the response ends. A connection costs a small future and a few KiB of buffers,
//! idle or held.
//!
//! What it leaves to Pingora, by handing over the connection with the bytes already read put
//! back (`Stream::rewind`): `/admin`, `/health`, `/metrics`, unknown functions, HTTP/1.0,
//! upgrades (WebSocket), chunked or large request bodies, `Expect`, h2c, malformed requests.

pub mod chunked;
mod conn;
mod exchange;
pub mod http1;
mod local;
pub mod pool;
pub mod request;
pub mod response;
mod threads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use control::config::Config;
use control::registry::{FnEntry, Registry};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::AsyncWriteExt;

use crate::activator::Bounds;
use crate::gateway::{Gateway, MAX_CHUNKED_BODY};
use crate::metrics::Metrics;
use crate::respond;
use conn::{shutting_down, write_flush, Conn};
use http1::Parsed;
use pool::Pool;

/// Bytes read at a time.
const READ_CHUNK: usize = 4096;
/// A response head larger than this is refused (Pingora's limit).
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;
/// Bytes read at a time from a replica once its response head is in.
const BODY_CHUNK: usize = 16 * 1024;
/// A request or response head larger than this is not the fast path's.
const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are forwarded by the fast path (buffered whole, so that a
/// request can be sent again on another connection); larger ones by Pingora.
const MAX_BODY: usize = 64 * 1024;
/// How long a client's connection may sit idle between requests, or send a request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections to a replica older than this are not reused (below uvicorn's 5 s).
const UPSTREAM_IDLE: Duration = Duration::from_secs(4);
/// Idle connections kept per replica.
const UPSTREAM_IDLE_PER_REPLICA: usize = 1024;

/// The gateway's connection handler: the fast path, with Pingora's proxy behind it.
pub struct FastPath {
    fallback: Arc<HttpProxy<Gateway>>,
    registry: Registry,
    metrics: Arc<Metrics>,
    prefix: String,
    bounds: Bounds,
    pool: Pool,
    /// Spread connections over Pingora's single-threaded runtimes ([`threads`]) and move
    /// each client socket to the runtime of the thread that serves it ([`local`]).
    localize: bool,
    threads: threads::Threads,
}

/// A request taken by the fast path, owned (the parsed head borrows the read buffer).
struct Request {
    entry: Arc<FnEntry>,
    /// The head's length in the read buffer.
    head_len: usize,
    /// The body's length, after the head.
    body_len: usize,
    close: bool,
    head_method: bool,
    idempotent: bool,
    /// A chunked body follows the head (decoded before forwarding).
    chunked: bool,
}

// === impl FastPath ===

impl FastPath {
    /// The fast path in front of `fallback`, Pingora's proxy running the same gateway.
    pub fn new(
        cfg: &Config,
        registry: Registry,
        metrics: Arc<Metrics>,
        fallback: HttpProxy<Gateway>,
        server: &ServerConf,
    ) -> Self {
        FastPath {
            fallback: Arc::new(fallback),
            registry,
            metrics,
            prefix: cfg.path_prefix.clone(),
            bounds: Bounds::from_config(cfg),
            pool: Pool::new(UPSTREAM_IDLE, UPSTREAM_IDLE_PER_REPLICA),
            localize: !server.work_stealing && server.threads > 1,
            threads: threads::Threads::new(cfg.pin_threads),
        }
    }

    /// Reads the next request head; `Ok(None)`: hand the connection to Pingora; `Err`: close it.
    async fn next_request(&self, c: &mut Conn) -> Result<Option<Request>, ()> {
        loop {
            if !c.buf.is_empty() {
                let parsed =
                    http1::parse_request(&c.buf, &self.prefix, &c.client_ip, MAX_BODY, &mut c.out);
                match parsed {
                    Parsed::Partial if c.buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Fallback => return Ok(None),
                    Parsed::Reject(why) => {
                        let bytes = respond::error_bytes(400, why, &[], false);
                        let _ = write_flush(&mut c.io, &bytes).await;
                        return Err(());
                    }
                    Parsed::Forward(p) => {
                        // Unknown functions (and a registry still being restored) are Pingora's.
                        let Some(entry) = self.registry.get(p.name) else {
                            return Ok(None);
                        };
                        return Ok(Some(Request {
                            entry,
                            head_len: p.head_len,
                            body_len: p.body_len,
                            close: p.close,
                            head_method: p.head_method,
                            idempotent: p.idempotent,
                            chunked: p.chunked,
                        }));
                    }
                }
            }
            c.read_more().await?;
        }
    }
}

#[async_trait]
impl ServerApp for FastPath {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if !self.localize {
            return self.serve_connection(io, shutdown).await;
        }
        match self.threads.place() {
            (None, open) => {
                let io = local::to_this_thread(io)?;
                let served = self.serve_connection(io, shutdown).await;
                drop(open);
                served
            }
            (Some(elsewhere), open) => {
                let (this, shutdown) = (self.clone(), shutdown.clone());
                let moved = elsewhere.spawn(async move {
                    let io = local::to_this_thread(io)?;
                    let served = this.serve_connection(io, &shutdown).await;
                    drop(open);
                    served
                });
                moved.await.ok().flatten()
            }
        }
    }

    async fn cleanup(&self) {
        self.fallback.cleanup().await
    }
}

impl FastPath {
    /// Serves the requests of one client connection, on this thread.
    async fn serve_connection(
        self: &Arc<Self>,
        io: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client_ip = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let mut stop = shutdown.clone();
        let mut c = Conn {
            io,
            buf: Vec::new(),
            out: Vec::new(),
            resp: Vec::new(),
            head: Vec::new(),
            client_ip,
            idle: Box::pin(tokio::time::sleep(CLIENT_TIMEOUT)),
            active: Instant::now(),
            stop: Box::pin(async move { shutting_down(&mut stop).await }),
            shutdown: shutdown.clone(),
        };
        loop {
            let req = match self.next_request(&mut c).await {
                Ok(Some(req)) => req,
                Ok(None) => return self.fall_back(c, shutdown).await,
                Err(()) => return None,
            };
            // The body, whole (it is small: larger ones go to Pingora).
            if req.chunked {
                match self.read_chunked(&mut c, req.head_len).await {
                    Ok(true) => {}
                    Ok(false) => return self.fall_back(c, shutdown).await,
                    Err(()) => return None,
                }
            } else {
                let len = req.head_len + req.body_len;
                while c.buf.len() < len {
                    c.read_more().await.ok()?;
                }
                c.out.extend_from_slice(&c.buf[req.head_len..len]);
                c.buf.drain(..len);
            }
            let keep = self.serve(&mut c, &req).await;
            c.active = Instant::now();
            // An idle connection keeps small buffers, whatever its last request needed.
            c.out.clear();
            c.resp.clear();
            c.head.clear();
            for b in [&mut c.buf, &mut c.out, &mut c.resp, &mut c.head] {
                if b.capacity() > READ_CHUNK && b.is_empty() {
                    *b = Vec::new();
                }
            }
            if !keep || req.close || *c.shutdown.borrow() {
                let _ = c.io.shutdown().await;
                return None;
            }
        }
    }

    /// Reads a chunked request body after the head (`head_len` bytes of `c.buf`) and appends it
    /// to `c.out` decoded, with its `Content-Length`, as nginx buffers and forwards small
    /// chunked bodies. `Ok(false)`: larger than [`MAX_CHUNKED_BODY`], for Pingora (which
    /// answers 413; nothing is drained);
    /// `Err`: malformed (answered 400) or the client left.
    async fn read_chunked(&self, c: &mut Conn, head_len: usize) -> Result<bool, ()> {
        let mut framing = chunked::Chunked::default();
        let mut end = head_len;
        loop {
            match framing.feed(&c.buf[end..]) {
                Ok(used) => end += used,
                Err(_) => {
                    let bytes = respond::error_bytes(400, "malformed chunked body", &[], false);
                    let _ = write_flush(&mut c.io, &bytes).await;
                    return Err(());
                }
            }
            if framing.done() {
                break;
            }
            if end - head_len > MAX_CHUNKED_BODY {
                return Ok(false);
            }
            c.read_more().await?;
        }
        let mut body = Vec::with_capacity(end - head_len);
        chunked::decode(&c.buf[head_len..end], &mut body).map_err(|_| ())?;
        let mut n = itoa::Buffer::new();
        c.out.extend_from_slice(b"Content-Length: ");
        c.out.extend_from_slice(n.format(body.len()).as_bytes());
        c.out.extend_from_slice(b"\r\n\r\n");
        c.out.extend_from_slice(&body);
        c.buf.drain(..end);
        Ok(true)
    }

    /// Hands the connection to Pingora's proxy, with what was read of it put back.
    async fn fall_back(self: &Arc<Self>, c: Conn, shutdown: &ShutdownWatch) -> Option<Stream> {
        let io = if c.buf.is_empty() {
            c.io
        } else {
            match c.io.into_any().downcast::<L4Stream>() {
                Ok(mut l4) => {
                    l4.rewind(&c.buf);
                    l4
                }
                Err(_) => return None,
            }
        };
        self.fallback.process_new(io, shutdown).await
    }
}
