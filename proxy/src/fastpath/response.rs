//! Where a function's response ends, and the head the client gets for it.
//!
//! A function is other people's code: its response head is parsed (as leniently as Pingora
//! parses responses) and written anew for the client, never passed through byte for byte, so
//! that a quirk or an attack in it cannot make the client frame the response differently from
//! the gateway (and read the next response from another function).

use super::chunked::Chunked;
use super::http1::{content_length, is_hop_by_hop, tokens, trim_ows, Malformed};

/// The most headers a response may carry before the larger table is tried.
const MAX_HEADERS: usize = 64;
/// The most headers a response's `Connection` header may name.
const MAX_NOMINATIONS: usize = 10;

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
/// HTTP/1 or its framing is contradictory (`Content-Length` with chunks, two lengths, a length
/// that is not digits). Parsed as leniently as Pingora parses responses (spaces before the
/// colon, folded lines, bare LF line ends), and written to `out` as the client gets it:
/// `HTTP/1.1`, CRLF line ends, `name: value` with folds unfolded, one `Content-Length`,
/// without hop-by-hop headers, and `Connection: close` when the client's connection ends
/// after it. A client never sees the function's bytes in a form it could frame differently.
pub fn parse_response(
    buf: &[u8],
    head_method: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_response_with(buf, head_method, &mut headers, out) {
        Err(Some(httparse::Error::TooManyHeaders)) => {
            let mut more = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            parse_response_with(buf, head_method, &mut more, out).map_err(|_| Malformed)
        }
        r => r.map_err(|_| Malformed),
    }
}

/// [`parse_response`] with room for `headers.len()` headers; `Err(Some(_))` is httparse's error.
fn parse_response_with<'b>(
    buf: &'b [u8],
    head_method: bool,
    headers: &mut [httparse::Header<'b>],
    out: &mut Vec<u8>,
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
    let mut named: [&[u8]; MAX_NOMINATIONS] = [b""; MAX_NOMINATIONS];
    let mut n_named = 0;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).ok_or(None)?;
            if length.is_some_and(|prev| prev != n) {
                return Err(None);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only one `Transfer-Encoding: chunked`. Other codings (gzip, identity, a list)
            // are refused, as h11 refuses them: a function has no reason to send them, and
            // each one read differently by some client is a desync.
            if encoded || !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(None);
            }
            encoded = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    keep_alive = true;
                } else if n_named < MAX_NOMINATIONS {
                    named[n_named] = token;
                    n_named += 1;
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
    let ends_client = close || framing == Framing::UntilClose;
    write_head(
        out,
        status,
        resp.reason.unwrap_or(""),
        resp.headers,
        &named[..n_named],
        length,
        ends_client,
    );
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        keep_alive,
        close: ends_client,
        http10: version == 0,
    }))
}

/// Writes the head the client gets (see [`parse_response`]).
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: &[httparse::Header<'_>],
    named: &[&[u8]],
    length: Option<u64>,
    close: bool,
) {
    let mut n = itoa::Buffer::new();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(n.format(status).as_bytes());
    out.push(b' ');
    out.extend(reason.bytes().map(unfold));
    out.extend_from_slice(b"\r\n");
    for h in headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"content-length")
            || named.iter().any(|x| x.eq_ignore_ascii_case(name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend(h.value.trim_ascii().iter().copied().map(unfold));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = length {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(n.format(len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// An obsolete line fold (RFC 9112 §5.2) becomes spaces.
fn unfold(b: u8) -> u8 {
    if b == b'\r' || b == b'\n' {
        b' '
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_where_a_response_ends() {
        let head =
            |raw: &str, head_method| parse_response(raw.as_bytes(), head_method, &mut Vec::new());
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
        // A coding other than chunked, a list, two headers: refused.
        for te in [
            "gzip",
            "gzip, chunked",
            "identity",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(head(&raw, false).is_err(), "{te}");
        }
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

    fn client_head(raw: &str) -> String {
        let mut out = Vec::new();
        parse_response(raw.as_bytes(), false, &mut out)
            .unwrap()
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_client_gets_a_normalised_head() {
        // A space before the colon, an obs-fold and bare LF line ends: written as the client
        // must read them, with the framing the gateway followed.
        let out =
            client_head("HTTP/1.1 200 OK\nTransfer-Encoding : chunked\nX-Folded: a\r\n  b\r\n\r\n");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Folded: a    b\r\n\r\n"
        );
        // Hop-by-hop headers stay here; one length; HTTP/1.0 with a length becomes HTTP/1.1.
        let out = client_head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
             X-Hop: 1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        // A body that runs until close: the client is told so.
        let out = client_head("HTTP/1.0 200 OK\r\nX: y\r\n\r\n");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn lengths_are_digits_only() {
        for cl in [
            "+5",
            "5\u{a0}",
            "0x5",
            "5 5",
            "-1",
            "",
            "99999999999999999999999",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nhello");
            assert!(
                parse_response(raw.as_bytes(), false, &mut Vec::new()).is_err(),
                "took Content-Length {cl:?}"
            );
        }
    }
}
