//! One exchange with a replica: taking a slot (holding the request while none is free),
//! sending the request on a pooled or new connection, relaying the response as it comes, and
//! what may be retried: a request is sent again only when no byte of it can have reached the
//! function, or when its method is idempotent.

use std::sync::Arc;
use std::time::Instant;

use control::registry::{Endpoint, FnEntry, InFlight, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::{client_gone, write_flush, Conn};
use super::http1::{self, Framing};
use super::{FastPath, Request, BODY_CHUNK, MAX_RESPONSE_HEAD, READ_CHUNK};
use crate::activator;
use crate::forward;
use crate::gateway::{CONNECT_TIMEOUT, MAX_ATTEMPTS};
use crate::metrics::Metrics;
use crate::respond;

/// How an exchange with a replica ended.
pub(super) enum Exchange {
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
pub(super) struct Flight<'a> {
    /// Counts the request in flight for its function until the end.
    _counted: InFlight,
    metrics: &'a Metrics,
    entry: &'a FnEntry,
    endpoint: Option<Arc<Endpoint>>,
    /// How the request ended, for its replica's window.
    outcome: Outcome,
    code: u16,
    started: Instant,
}

// === impl FastPath (exchange) ===

impl FastPath {
    /// Forwards one request to a replica of its function (holding it while the function
    /// starts) and its response back; `true`: the client's connection stays open.
    pub(super) async fn serve(&self, c: &mut Conn, req: &Request) -> bool {
        let entry = &*req.entry;
        let mut flight = Flight {
            _counted: req.entry.begin(),
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
            // Part of the request may have been written before a failure: resent only when
            // `forward::may_resend` allows it.
            let resend = forward::may_resend(req.idempotent, true);
            if let Err(e) = up.write_all(&c.out).await {
                match (resend, reused) {
                    (true, true) => continue,
                    (true, false) => {
                        return Exchange::ConnectFailed(format!("sending the request: {e}"))
                    }
                    (false, _) => return not_resent(),
                }
            }
            match self.relay(c, &mut up, req.head_method).await {
                // A pooled connection the replica closed meanwhile: again, on a new one.
                Err(Relay::Closed) if reused && resend => continue,
                // A new replica that reset the connection before answering: back in line.
                Err(Relay::Closed) if resend => {
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
                    ep.keeps_connections(reusable);
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

// === impl Flight ===

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Some(ep) = self.endpoint.take() {
            self.entry.release_with(&ep, self.outcome);
        }
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.observe(
            &self.entry.series,
            &self.entry.name,
            self.code,
            Some(seconds),
        );
    }
}

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
