//! The HTTP/1.1 the fast path speaks: which requests it takes, how it rewrites their head for
//! the function, and where a response ends (so that its connection can be reused).

use crate::routes;

/// The most headers a request or response may carry on the fast path; more go to Pingora.
const MAX_HEADERS: usize = 64;

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
}

/// What the parser made of the bytes read so far.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// The head is not complete yet: read more.
    Partial,
    /// Pingora's full HTTP stack handles this one: not under the gateway prefix, not HTTP/1.1,
    /// an upgrade, a chunked or large body, `Expect`, malformed, …
    Fallback,
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
    let mut close = false;
    let mut host = None;
    let mut xff = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).and_then(|n| usize::try_from(n).ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                (Some(n), Some(prev)) if n == prev => {}
                _ => return Parsed::Fallback,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Fallback;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Fallback;
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            host.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.get_or_insert(h.value);
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > max_body {
        return Parsed::Fallback;
    }

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
        if name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") {
            let what = &name[12..];
            if what.eq_ignore_ascii_case(b"for")
                || what.eq_ignore_ascii_case(b"proto")
                || what.eq_ignore_ascii_case(b"host")
                || what.eq_ignore_ascii_case(b"prefix")
            {
                continue;
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match (xff, client_ip.is_empty()) {
        (Some(prev), false) => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
            out.extend_from_slice(client_ip.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (None, false) => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(client_ip.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // No client address (not TCP): the header stays as the client sent it.
        (Some(prev), true) => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            out.extend_from_slice(prev);
            out.extend_from_slice(b"\r\n");
        }
        (None, true) => {}
    }
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-Prefix: ");
    out.extend_from_slice(&path.as_bytes()[..path.len() - route.rest.len()]);
    out.extend_from_slice(b"\r\n\r\n");
    Parsed::Forward(Prepared {
        name: route.name,
        head_len,
        body_len,
        close,
        head_method: method == "HEAD",
    })
}

/// A response the fast path cannot follow: not HTTP/1, or contradictory framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP/1 response")]
pub struct Malformed;

/// A `Content-Length` value.
fn content_length(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The comma-separated tokens of a header value (`Connection: keep-alive, Upgrade`), trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// How a response's body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, followed through to its last chunk.
    Chunked(Chunked),
    /// Until the function closes the connection.
    UntilClose,
}

/// A response head as the fast path needs it.
#[derive(Debug)]
pub struct ResponseHead {
    /// Length of the head.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// Where the body ends.
    pub framing: Framing,
    /// The function keeps the connection open after this response.
    pub keep_alive: bool,
    /// The response says `Connection: close`: the client will close after it too.
    pub close: bool,
    /// `HTTP/1.0`: the status line is sent to the client as `HTTP/1.1` when the body's end is
    /// known, so that the client keeps its connection.
    pub http10: bool,
}

/// Headers a response may carry, as Pingora allows.
const MAX_RESPONSE_HEADERS: usize = 256;

/// The response head at the start of `buf`; `Ok(None)` while incomplete, `Err` when it is not
/// HTTP/1 or its framing is contradictory (`Content-Length` with chunks, or two lengths).
/// Parsed as leniently as Pingora parses responses (spaces before the colon, folded lines).
pub fn parse_response(buf: &[u8], head_method: bool) -> Result<Option<ResponseHead>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_response_with(buf, head_method, &mut headers) {
        Err(Some(httparse::Error::TooManyHeaders)) => {
            let mut more = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            parse_response_with(buf, head_method, &mut more).map_err(|_| Malformed)
        }
        r => r.map_err(|_| Malformed),
    }
}

/// [`parse_response`] with room for `headers.len()` headers; `Err(Some(_))` is httparse's error.
fn parse_response_with<'b>(
    buf: &'b [u8],
    head_method: bool,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<ResponseHead>, Option<httparse::Error>> {
    let mut resp = httparse::Response::new(headers);
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    let len = match config.parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Some(e)),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(None);
    };
    let mut keep_alive = version == 1;
    let mut close = false;
    let mut length = None;
    let mut encoded = false;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).ok_or(None)?;
            if length.is_some_and(|prev| prev != n) {
                return Err(None);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding decides: chunked, or (anything else) the body runs until close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            encoded = true;
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    keep_alive = true;
                }
            }
        }
    }
    if encoded && length.is_some() {
        // Two framings: a client trusting the other one would lose track of the connection.
        return Err(None);
    }
    let framing = if head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunked::default())
    } else if let (false, Some(n)) = (encoded, length) {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        keep_alive,
        close,
        http10: version == 0,
    }))
}

/// Follows a chunked body as it passes through, to find its end. The bytes are forwarded as
/// they are; only their framing is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    /// A hex digit of the current size line has been read.
    digits: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or the line's end.
    SizeWs,
    /// After the size: an extension, up to the line's end.
    Extension,
    /// Expecting the `\n` that ends the size line.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// Expecting the `\r` after a chunk's data.
    DataCr,
    /// Expecting the `\n` after a chunk's data.
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the `\n` of the empty line that ends the body.
    EndLf,
    /// The body is complete.
    Done,
}

impl Chunked {
    /// Reads `data`; returns how many bytes belong to the body (all of them, unless the body
    /// ended inside `data`), or `Err` on a malformed chunk.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits = true;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(Malformed)?;
                    }
                    _ if !self.digits => return Err(Malformed),
                    b';' => self.state = ChunkState::Extension,
                    b' ' | b'\t' => self.state = ChunkState::SizeWs,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(Malformed),
                },
                ChunkState::SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(Malformed),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.digits = false;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = (data.len() - i).min(self.size as usize);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::Trailer
                    };
                }
                ChunkState::Trailer => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
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
        let (p, out) = forward("GET /gateway/f?q HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(p.unwrap().3);
        assert!(out.starts_with("GET /?q HTTP/1.1\r\nConnection: close\r\n"));
    }

    #[test]
    fn leaves_the_rest_to_pingora() {
        let fallback = |raw: &str| forward(raw).0.is_none();
        assert!(fallback("GET /health HTTP/1.1\r\n\r\n"));
        assert!(fallback("GET /gateway/f/ HTTP/1.0\r\n\r\n"));
        assert!(fallback(
            "GET /gateway/f/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(fallback(
            "POST /gateway/f/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(fallback(
            "POST /gateway/f/ HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
        ));
        assert!(fallback(
            "POST /gateway/f/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ));
        assert!(fallback("GET /gateway/ HTTP/1.1\r\n\r\n"));
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

    #[test]
    fn finds_where_a_response_ends() {
        let head = |raw: &str, head_method| parse_response(raw.as_bytes(), head_method);
        let r = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (200, Framing::Length(5), true)
        );
        let r = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Length(0));
        let r = head("HTTP/1.0 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
        let r = head(
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(0), false));
        assert!(head("HTTP/1.1 200 OK\r\nContent-Len", false)
            .unwrap()
            .is_none());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        // Two framings, or two lengths: refused, not guessed.
        let both = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert!(head(both, false).is_err());
        assert!(head(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
        // A coding other than chunked last: the body runs until close.
        let r = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
        // 1xx and 304 have no body; HTTP/1.0 keeps alive only when it says so.
        let r = head("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.framing), (103, Framing::Length(0)));
        let r = head(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Length(0));
        let r = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.keep_alive, r.http10, r.framing),
            (true, true, Framing::Length(2))
        );
        // Up to 256 headers, as Pingora allows; spaces before the colon are tolerated.
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length : 0\r\n\r\n",
            "Set-Cookie: a=b\r\n".repeat(200)
        );
        assert_eq!(
            head(&many, false).unwrap().unwrap().framing,
            Framing::Length(0)
        );
    }

    #[test]
    fn follows_chunks_split_anywhere() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let a = c.feed(&body[..split]).unwrap();
            assert_eq!(a, split.min(end));
            if split < end {
                assert!(!c.done());
                assert_eq!(c.feed(&body[split..]).unwrap(), end - split);
            }
            assert!(c.done(), "split at {split}");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
        assert!(
            Chunked::default().feed(b" 5\r\n").is_err(),
            "no digit before the space"
        );
        assert!(
            Chunked::default().feed(b"5 5\r\n").is_err(),
            "a second number"
        );
        assert!(
            Chunked::default().feed(b"\r\n").is_err(),
            "an empty size line"
        );
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"3 ;x\r\nabc\r\n0\r\n\r\n").unwrap(), 16);
        assert!(c.done());
        assert!(Chunked::default().feed(b"1\r\nab").is_err());
    }
}
