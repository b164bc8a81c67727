//! The requests the fast path takes, and the head it sends the function for them.
//!
//! It takes plain HTTP/1.1 requests under the gateway prefix with no body or a small
//! `Content-Length` body, and rewrites their head as Pingora's proxy does on the other path:
//! the function's path, hop-by-hop headers removed (the standard ones and those the
//! `Connection` header names), one `Content-Length`, headers whose names hold `_` dropped (they
//! could alias ours through a server that maps `-` to `_`, as nginx drops them), and our
//! `X-Forwarded-*`. A request that breaks RFC 9112 §3.2 (HTTP/1.1 without exactly one `Host`)
//! is answered 400 here.

use super::http1::{content_length, tokens, trim_ows};
use crate::forward;
use crate::routes;

/// The most headers a request may carry on the fast path; more go to Pingora.
const MAX_HEADERS: usize = 64;
/// The most headers a `Connection` header may name, as Pingora allows.
const MAX_NOMINATIONS: usize = 10;

/// A request head the fast path takes, rewritten for the function.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The function's name.
    pub name: &'a str,
    /// Length of the head in the read buffer.
    pub head_len: usize,
    /// Length of the body that follows it (`Content-Length`).
    pub body_len: usize,
    /// The client asked to close the connection after this response.
    pub close: bool,
    /// A `HEAD` request: its response has no body, whatever it declares.
    pub head_method: bool,
    /// An idempotent method (RFC 9110 §9.2.2): it may be sent again when a connection fails
    /// before any of its response arrived.
    pub idempotent: bool,
    /// A chunked body follows: the head in `out` lacks its `Content-Length` and final empty
    /// line, which the caller writes once it has read and decoded the body (so that a server
    /// without chunked request support, such as Python's `http.server`, reads it).
    pub chunked: bool,
}

/// What the parser made of the bytes read so far.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// The head is not complete yet: read more.
    Partial,
    /// Pingora's full HTTP stack handles this one: not under the gateway prefix, not HTTP/1.1,
    /// an upgrade, a chunked or large body, `Expect`, malformed, …
    Fallback,
    /// A request no server may take: answer this 400 and close.
    Reject(&'static str),
    /// A request the fast path forwards; its rewritten head has been written to `out`.
    Forward(Prepared<'a>),
}

/// Parses the request head at the start of `buf`. When the fast path takes it, writes the head
/// the function receives into `out`: the path without `{prefix}/{name}`, and `X-Forwarded-For`
/// (with `client_ip` appended), `-Proto`, `-Host` and `-Prefix`.
pub fn parse_request<'a>(
    buf: &'a [u8],
    prefix: &str,
    client_ip: &str,
    max_body: usize,
    out: &mut Vec<u8>,
) -> Parsed<'a> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Fallback;
    };
    if method == "CONNECT" {
        return Parsed::Fallback;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Some(route) = routes::split(prefix, path) else {
        return Parsed::Fallback;
    };
    let mut body_len = None;
    let mut chunked = false;
    let mut close = false;
    let mut hosts = 0;
    let mut host = None;
    let mut xff = None;
    let mut named: [&[u8]; MAX_NOMINATIONS] = [b""; MAX_NOMINATIONS];
    let mut n_named = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).and_then(|n| usize::try_from(n).ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                (Some(n), Some(prev)) if n == prev => {}
                _ => return Parsed::Fallback,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // One `chunked` only; other codings are Pingora's (which answers 501 or 400).
            if chunked || !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Parsed::Fallback;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            return Parsed::Fallback;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Fallback;
                }
                if n_named == MAX_NOMINATIONS {
                    return Parsed::Reject("the Connection header names too many headers");
                }
                if [
                    &b"host"[..],
                    b"x-forwarded-for",
                    b"x-forwarded-host",
                    b"x-forwarded-proto",
                ]
                .iter()
                .any(|p| token.eq_ignore_ascii_case(p))
                {
                    return Parsed::Reject("the Connection header names a protected header");
                }
                named[n_named] = token;
                n_named += 1;
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.get_or_insert(h.value);
        }
    }
    if chunked && body_len.is_some() {
        // RFC 9112 §6.3: both framings in a request is an attempt at smuggling.
        return Parsed::Reject("a request may not carry both Transfer-Encoding and Content-Length");
    }
    if hosts != 1 {
        return Parsed::Reject("an HTTP/1.1 request needs exactly one Host header (RFC 9112 §3.2)");
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > max_body {
        return Parsed::Fallback;
    }
    let named = &named[..n_named];

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(if route.rest.is_empty() {
        b"/"
    } else {
        route.rest.as_bytes()
    });
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if forward::drops_request_header(name, named)
            || name.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !chunked && (body_len > 0 || req.method != Some("GET") && req.method != Some("HEAD")) {
        // One length, whatever duplicates the client sent (they agreed, or it went to Pingora).
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(n.format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if xff.is_some() || !client_ip.is_empty() {
        out.extend_from_slice(b"X-Forwarded-For: ");
        forward::forwarded_for(xff, client_ip, out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-Prefix: ");
    out.extend_from_slice(&path.as_bytes()[..path.len() - route.rest.len()]);
    out.extend_from_slice(b"\r\n");
    if !chunked {
        out.extend_from_slice(b"\r\n");
    }
    Parsed::Forward(Prepared {
        name: route.name,
        head_len,
        body_len,
        close,
        head_method: method == "HEAD",
        idempotent: forward::is_idempotent(method),
        chunked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(raw: &str) -> (Option<(String, usize, usize, bool)>, String) {
        let mut out = Vec::new();
        let parsed = parse_request(raw.as_bytes(), "/gateway", "127.0.0.1", 1024, &mut out);
        let p = match parsed {
            Parsed::Forward(p) => Some((p.name.to_string(), p.head_len, p.body_len, p.close)),
            _ => None,
        };
        (p, String::from_utf8(out).unwrap())
    }

    fn rejected(raw: &str) -> bool {
        let mut out = Vec::new();
        matches!(
            parse_request(raw.as_bytes(), "/gateway", "127.0.0.1", 1024, &mut out),
            Parsed::Reject(_)
        )
    }

    #[test]
    fn rewrites_the_head_for_the_function() {
        let raw = "POST /gateway/echo/a/b?x=1 HTTP/1.1\r\nHost: h:8080\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-proto: https\r\nContent-Length: 3\r\n\r\nabc";
        let (p, out) = forward(raw);
        assert_eq!(p, Some(("echo".into(), raw.len() - 3, 3, false)));
        assert_eq!(
            out,
            "POST /a/b?x=1 HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 3\r\n\
             X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: h:8080\r\nX-Forwarded-Prefix: /gateway/echo\r\n\r\n"
        );
        let (p, out) = forward("GET /gateway/f?q HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        assert!(p.unwrap().3);
        assert!(
            out.starts_with("GET /?q HTTP/1.1\r\nHost: h\r\nX-Forwarded-For"),
            "{out}"
        );
    }

    #[test]
    fn hop_by_hop_and_underscored_headers_stay_here() {
        let (p, out) = forward(
            "GET /gateway/f/ HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Secret: s\r\nProxy-Connection: x\r\n\
             X_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\nX-Kept: 1\r\n\r\n",
        );
        assert!(p.is_some());
        for gone in [
            "Connection",
            "Keep-Alive",
            "TE:",
            "X-Secret",
            "Proxy-",
            "X_",
            "_Enc",
        ] {
            assert!(!out.contains(gone), "{gone} reached the function:\n{out}");
        }
        assert!(out.contains("X-Kept: 1\r\n"));
    }

    #[test]
    fn one_content_length_for_identical_duplicates() {
        let raw = "POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
        let (p, out) = forward(raw);
        assert_eq!(p.unwrap().2, 2);
        assert_eq!(out.matches("Content-Length").count(), 1, "{out}");
    }

    #[test]
    fn host_must_be_there_once() {
        assert!(rejected("GET /gateway/f/ HTTP/1.1\r\n\r\n"));
        assert!(rejected(
            "GET /gateway/f/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        ));
        assert!(rejected(
            "GET /gateway/f/ HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n"
        ));
        assert!(!rejected("GET /gateway/f/ HTTP/1.1\r\nHost: a\r\n\r\n"));
    }

    #[test]
    fn lengths_are_digits_only() {
        for cl in ["+5", "5\u{a0}", "0x5", "5 5", "-1", ""] {
            let raw = format!(
                "POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\nhello"
            );
            assert!(forward(&raw).0.is_none(), "took Content-Length {cl:?}");
        }
    }

    #[test]
    fn leaves_the_rest_to_pingora() {
        let fallback = |raw: &str| forward(raw).0.is_none();
        assert!(fallback("GET /health HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(fallback("GET /gateway/f/ HTTP/1.0\r\n\r\n"));
        assert!(fallback(
            "GET /gateway/f/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(fallback(
            "POST /gateway/f/ HTTP/1.1
Host: h
Transfer-Encoding: gzip, chunked

"
        ));
        assert!(rejected(
            "POST /gateway/f/ HTTP/1.1
Host: h
Transfer-Encoding: chunked
Content-Length: 3

"
        ));
        assert!(fallback(
            "POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n"
        ));
        assert!(fallback(
            "POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ));
        assert!(fallback("GET /gateway/ HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(fallback("BAD\r\n\r\n"));
        let mut out = Vec::new();
        assert!(matches!(
            parse_request(
                b"GET /gateway/f/ HTTP/1.1\r\nHo",
                "/gateway",
                "",
                0,
                &mut out
            ),
            Parsed::Partial
        ));
    }
}
