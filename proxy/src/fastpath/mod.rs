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
pub mod http1;
mod local;
pub mod pool;
pub mod request;
pub mod response;
mod threads;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use control::config::Config;
use control::registry::{Endpoint, FnEntry, Outcome, Registry};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::activator::{self, Bounds};
use crate::gateway::{Gateway, CONNECT_TIMEOUT, MAX_ATTEMPTS, MAX_CHUNKED_BODY};
use crate::metrics::Metrics;
use crate::respond;
use http1::{Framing, Parsed};
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

/// One client connection's buffers.
struct Conn {
    io: Stream,
    /// Bytes read from the client and not yet forwarded.
    buf: Vec<u8>,
    /// The request as it goes to the function.
    out: Vec<u8>,
    /// The response as it comes from the function.
    resp: Vec<u8>,
    /// A response head as the client gets it (normalised).
    head: Vec<u8>,
    client_ip: String,
    /// Fires when the connection may have been idle for [`CLIENT_TIMEOUT`]; checked against
    /// `active` and pushed back. One timer per connection, not one per read: arming a timer
    /// on an empty timer wheel wakes the runtime's driver with a syscall.
    idle: Pin<Box<Sleep>>,
    /// When the connection last received bytes or finished a response, or opened.
    active: Instant,
    /// Resolves when the server shuts down.
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    shutdown: ShutdownWatch,
}

// === impl Conn ===

impl Conn {
    /// Reads more of the client's bytes into `buf`; `Err` when the client is gone, silent for
    /// too long, or the server shuts down while no request is under way.
    async fn read_more(&mut self) -> Result<(), ()> {
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

/// How an exchange with a replica ended.
enum Exchange {
    /// The response went to the client; `true`: the client's connection stays open.
    Done { status: u16, keep_client: bool },
    /// Nothing reached the client, and sending the request again is safe (nothing was sent to
    /// the replica, or the method is idempotent): another slot may take it.
    ConnectFailed(String),
    /// The replica failed; `sent`: part of the response already went to the client.
    Failed {
        status: u16,
        sent: bool,
        why: String,
    },
}

/// Counts a request in flight for its function and records it when it ends, however it ends.
struct Flight<'a> {
    metrics: &'a Metrics,
    entry: &'a FnEntry,
    endpoint: Option<Arc<Endpoint>>,
    /// How the request ended, for its replica's window.
    outcome: Outcome,
    code: u16,
    started: Instant,
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

    /// Forwards one request to a replica of its function (holding it while the function
    /// starts) and its response back; `true`: the client's connection stays open.
    async fn serve(&self, c: &mut Conn, req: &Request) -> bool {
        let entry = &*req.entry;
        entry.inflight.fetch_add(1, Ordering::AcqRel);
        let mut flight = Flight {
            metrics: &self.metrics,
            entry,
            endpoint: None,
            outcome: Outcome::Other,
            code: 0,
            started: Instant::now(),
        };
        let mut failed = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ep = match entry.acquire_avoiding(failed) {
                Some(ep) => ep,
                None => {
                    let gone = client_gone(&mut c.io, &mut c.buf);
                    match activator::acquire(&self.registry, &req.entry, self.bounds, gone).await {
                        Ok(ep) => ep,
                        Err(refusal) => {
                            flight.code = refusal.status;
                            if refusal.status != 499 {
                                let bytes = respond::error_bytes(
                                    refusal.status,
                                    &refusal.message,
                                    &refusal.headers(),
                                    req.head_method,
                                );
                                let _ = write_flush(&mut c.io, &bytes).await;
                            }
                            return false;
                        }
                    }
                }
            };
            flight.endpoint = Some(ep.clone());
            match self.exchange(c, &ep, req).await {
                Exchange::Done {
                    status,
                    keep_client,
                } => {
                    flight.code = status;
                    flight.outcome = Outcome::Answered;
                    return keep_client;
                }
                Exchange::ConnectFailed(why) if attempts < MAX_ATTEMPTS => {
                    // Back in line: the replica's window shrinks, the next free slot takes it.
                    log::debug!("function {:?}: {why}; trying again", entry.name);
                    if let Some(ep) = flight.endpoint.take() {
                        entry.release_with(&ep, Outcome::ConnectFailed);
                        failed = Some(ep.replica);
                    }
                }
                Exchange::ConnectFailed(why) => {
                    return self.fail(c, &mut flight, 502, false, &why, req).await;
                }
                Exchange::Failed { status, sent, why } => {
                    return self.fail(c, &mut flight, status, sent, &why, req).await;
                }
            }
        }
    }

    /// Answers a failed exchange with a JSON error, unless part of the response already went
    /// out; the client's connection is closed either way.
    async fn fail(
        &self,
        c: &mut Conn,
        flight: &mut Flight<'_>,
        status: u16,
        sent: bool,
        why: &str,
        req: &Request,
    ) -> bool {
        flight.code = status;
        if !sent {
            let msg = format!("function {:?} failed to answer: {why}", req.entry.name);
            let bytes = respond::error_bytes(status, &msg, &[], req.head_method);
            let _ = write_flush(&mut c.io, &bytes).await;
        } else {
            log::debug!("function {:?} failed mid-response: {why}", req.entry.name);
        }
        false
    }

    /// Sends the request in `c.out` to `ep` and passes the response back to the client.
    async fn exchange(&self, c: &mut Conn, ep: &Endpoint, req: &Request) -> Exchange {
        let mut pooled = self.pool.take(ep.replica);
        // Bytes of a request may have reached the function once written: only an idempotent
        // request is sent again after that (RFC 9110 §9.2.2), as nginx does.
        let not_resent = || Exchange::Failed {
            status: 502,
            sent: false,
            why: "it closed the connection without answering (a request that is not \
                  idempotent is not sent twice)"
                .into(),
        };
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(up) => up,
                None => match connect(ep).await {
                    Ok(up) => up,
                    Err(why) => return Exchange::ConnectFailed(why),
                },
            };
            c.resp.clear();
            if let Err(e) = up.write_all(&c.out).await {
                match (req.idempotent, reused) {
                    (true, true) => continue,
                    (true, false) => {
                        return Exchange::ConnectFailed(format!("sending the request: {e}"))
                    }
                    (false, _) => return not_resent(),
                }
            }
            match self.relay(c, &mut up, req.head_method).await {
                // A pooled connection the replica closed meanwhile: again, on a new one.
                Err(Relay::Closed) if reused && req.idempotent => continue,
                // A new replica that reset the connection before answering: back in line.
                Err(Relay::Closed) if req.idempotent => {
                    return Exchange::ConnectFailed(
                        "it closed the connection without answering".into(),
                    )
                }
                Err(Relay::Closed) => return not_resent(),
                Err(Relay::Upstream { sent, why, status }) => {
                    return Exchange::Failed { status, sent, why }
                }
                Err(Relay::Client { status }) => {
                    return Exchange::Done {
                        status,
                        keep_client: false,
                    }
                }
                Ok((status, reusable, keep_client)) => {
                    // A function may answer without reading a body: unread bytes may follow on
                    // that connection, to be read as the next request. Never reused then.
                    if reusable && req.body_len == 0 && !req.chunked {
                        self.pool.put(ep.replica, up);
                    }
                    return Exchange::Done {
                        status,
                        keep_client,
                    };
                }
            }
        }
    }

    /// Reads the response from `up` and writes it to the client as it arrives. Returns the
    /// status, whether `up` can be reused and whether the client's connection stays open.
    async fn relay(
        &self,
        c: &mut Conn,
        up: &mut TcpStream,
        head_method: bool,
    ) -> Result<(u16, bool, bool), Relay> {
        let mut sent = false;
        let upstream = |sent: bool, why: &str| Relay::Upstream {
            sent,
            why: why.to_string(),
            status: 502,
        };
        // The head, after any informational (1xx) responses.
        let head = loop {
            match http1::parse_response(&c.resp, head_method, &mut c.head) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    write_flush(&mut c.io, &c.head)
                        .await
                        .map_err(|_| Relay::Client { status: h.status })?;
                    sent = true;
                    c.resp.drain(..h.len);
                    continue;
                }
                // Never asked for (the fast path forwards no upgrade): not a response to pass on.
                Ok(Some(h)) if h.status == 101 => {
                    return Err(upstream(sent, "it switched protocols without being asked"))
                }
                Ok(Some(h)) => break h,
                Ok(None) if c.resp.len() < MAX_RESPONSE_HEAD => {}
                Ok(None) => return Err(upstream(sent, "its response head is too large")),
                Err(_) => return Err(upstream(sent, "its response is not valid HTTP/1")),
            }
            c.resp.reserve(READ_CHUNK);
            // While the function works, a client that goes away ends the request (pipelined
            // bytes it sends meanwhile are kept).
            let read = tokio::select! {
                biased;
                r = up.read_buf(&mut c.resp) => r,
                _ = client_gone(&mut c.io, &mut c.buf) => return Err(Relay::Client { status: 499 }),
            };
            match read {
                Ok(n) if n > 0 => {}
                // EOF or a reset before the first byte of a response.
                _ if c.resp.is_empty() && !sent => return Err(Relay::Closed),
                Ok(_) => return Err(upstream(sent, "it closed the connection mid-response")),
                Err(e) => return Err(upstream(sent, &format!("reading its response: {e}"))),
            }
        };
        let status = head.status;
        let client = |_| Relay::Client { status };
        // Once the head is out, a failure is recorded with the status the client got.
        let midway = |why: &str| Relay::Upstream {
            sent: true,
            why: why.to_string(),
            status,
        };
        let mut framing = head.framing;
        // `close`: the function said so, or the body runs until it closes.
        let keep_client = !head.close;
        let mut reusable = head.keep_alive;

        // The head (as HTTP/1.1 when the body's end is known) and the body read with it.
        let body_start = head.len;
        let mut end = c.resp.len();
        let mut done = advance(&mut framing, &c.resp[body_start..], &mut end, body_start)
            .map_err(|_| upstream(sent, "its chunked body is malformed"))?;
        if end < c.resp.len() {
            reusable = false; // more than the response: do not trust the connection
        }
        // The head as the client gets it, with the body bytes read along, in one write.
        c.head.extend_from_slice(&c.resp[body_start..end]);
        write_flush(&mut c.io, &c.head).await.map_err(client)?;
        // The rest of the body, as it comes.
        while !done {
            c.resp.clear();
            c.resp.reserve(BODY_CHUNK);
            // A client that goes away mid-response (an event stream it stops reading) ends
            // the exchange at once: the function's connection closes, its slot is freed.
            let read = tokio::select! {
                biased;
                r = up.read_buf(&mut c.resp) => r,
                _ = client_gone(&mut c.io, &mut c.buf) => return Err(Relay::Client { status }),
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => return Err(midway(&format!("reading its response: {e}"))),
            };
            if n == 0 {
                if matches!(framing, Framing::UntilClose) {
                    break;
                }
                return Err(midway("it closed the connection mid-response"));
            }
            let mut end = n;
            done = advance(&mut framing, &c.resp, &mut end, 0)
                .map_err(|_| midway("its chunked body is malformed"))?;
            if end < n {
                reusable = false;
            }
            write_flush(&mut c.io, &c.resp[..end])
                .await
                .map_err(client)?;
        }
        Ok((status, reusable && done, keep_client))
    }
}

/// Why relaying a response stopped.
enum Relay {
    /// The replica closed the connection before sending anything.
    Closed,
    /// The replica failed; `sent`: part of the response already went to the client, whose
    /// status (or 502 before) is `status`.
    Upstream {
        sent: bool,
        why: String,
        status: u16,
    },
    /// The client went away.
    Client { status: u16 },
}

/// Follows `data` (body bytes starting at `offset` of the buffer) through `framing`; sets
/// `end` to the buffer's end of the response within them and returns whether it is complete.
fn advance(
    framing: &mut Framing,
    data: &[u8],
    end: &mut usize,
    offset: usize,
) -> Result<bool, http1::Malformed> {
    match framing {
        Framing::Length(left) => {
            let take = (*left).min(data.len() as u64);
            *left -= take;
            *end = offset + take as usize;
            Ok(*left == 0)
        }
        Framing::Chunked(chunked) => {
            let used = chunked.feed(data)?;
            *end = offset + used;
            Ok(chunked.done())
        }
        Framing::UntilClose => {
            *end = offset + data.len();
            Ok(false)
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

// === impl Flight ===

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Some(ep) = self.endpoint.take() {
            self.entry.release_with(&ep, self.outcome);
        }
        self.entry.inflight.fetch_sub(1, Ordering::AcqRel);
        self.entry.touch();
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .observe(&self.entry.ext, &self.entry.name, self.code, Some(seconds));
    }
}

// === helpers ===

/// A new connection to a replica.
async fn connect(ep: &Endpoint) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep.addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connecting to {}: {e}", ep.addr)),
        Err(_) => Err(format!(
            "connecting to {} took longer than {CONNECT_TIMEOUT:?}",
            ep.addr
        )),
    }
}

async fn write_flush(io: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Resolves when the client goes away while its request is held. Its next pipelined request,
/// if it sends one meanwhile, is kept in `buf`.
async fn client_gone(io: &mut Stream, buf: &mut Vec<u8>) {
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
async fn shutting_down(rx: &mut ShutdownWatch) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
