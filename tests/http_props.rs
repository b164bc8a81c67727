//! Property tests of the fast path's HTTP/1.1 parsers: whatever bytes arrive, they do not
//! panic, and what they forward is checked by httparse in its strict mode — a parser that is not
//! the one under test being lenient — rather than by themselves.

use proptest::prelude::*;
use proxy::fastpath::http1::{parse_request, parse_response, Chunked, Framing, Parsed};

/// httparse, strict: no spaces before colons, no folds, CRLF only.
fn strict_headers(head: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut headers = [httparse::EMPTY_HEADER; 300];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    if head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
        return None; // a bare LF
    }
    Some(
        r.headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    )
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^`|~_-]{1,12}"
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x21u8..0x7f,
            1 => Just(b' '),
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..24,
    )
}

/// A header line, sometimes in a form a lenient parser tolerates or a hostile peer sends.
fn header_line() -> impl Strategy<Value = Vec<u8>> {
    let named = prop_oneof![
        4 => token(),
        1 => Just("Content-Length".to_string()),
        1 => Just("Transfer-Encoding".to_string()),
        1 => Just("Connection".to_string()),
        1 => Just("Host".to_string()),
        1 => Just("Keep-Alive".to_string()),
        1 => Just("X_Forwarded_For".to_string()),
    ];
    let values = prop_oneof![
        4 => value(),
        1 => Just(b"chunked".to_vec()),
        1 => Just(b"close".to_vec()),
        1 => Just(b"keep-alive, X-Hop".to_vec()),
        1 => (0u32..100).prop_map(|n| n.to_string().into_bytes()),
        1 => Just(b"+5".to_vec()),
        1 => Just(b"5\xc2\xa0".to_vec()),
    ];
    let shape = prop_oneof![
        6 => Just(0u8), // name: value\r\n
        1 => Just(1),   // name : value\r\n
        1 => Just(2),   // name: value\n
        1 => Just(3),   // name: a\r\n b\r\n (obs-fold)
    ];
    (named, values, shape).prop_map(|(n, v, s)| {
        let mut line = n.into_bytes();
        if s == 1 {
            line.push(b' ');
        }
        line.extend_from_slice(b": ");
        line.extend_from_slice(&v);
        match s {
            2 => line.push(b'\n'),
            3 => line.extend_from_slice(b"\r\n  folded\r\n"),
            _ => line.extend_from_slice(b"\r\n"),
        }
        line
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn requests_never_panic_and_forward_only_clean_heads(
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("HEAD"), Just("DELETE")],
        lines in prop::collection::vec(header_line(), 0..12),
        body in prop::collection::vec(any::<u8>(), 0..64),
        noise in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut raw = format!("{method} /gateway/f/x?y=1 HTTP/1.1\r\n").into_bytes();
        for l in &lines {
            raw.extend_from_slice(l);
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&body);
        raw.extend_from_slice(&noise);
        let mut out = Vec::new();
        // Never panics, whatever the bytes (including truncated and garbled ones).
        for cut in [raw.len(), raw.len() / 2, 3] {
            let _ = parse_request(&raw[..cut.min(raw.len())], "/gateway", "10.0.0.1", 64, &mut out);
        }
        if let Parsed::Forward(p) = parse_request(&raw, "/gateway", "10.0.0.1", 1 << 20, &mut out) {
            prop_assert!(p.head_len + p.body_len <= raw.len() || p.head_len <= raw.len());
            if p.chunked {
                // The fast path ends the head once it has decoded the body (here: empty).
                prop_assert_eq!(p.body_len, 0);
                out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            }
            // What the function gets is a clean head by a strict parser's reading: one Host,
            // no hop-by-hop or underscored names, at most one Content-Length, equal to the body.
            let mut headers = [httparse::EMPTY_HEADER; 300];
            let mut r = httparse::Request::new(&mut headers);
            let n = r.parse(&out);
            prop_assert!(matches!(n, Ok(httparse::Status::Complete(n)) if n == out.len()), "{:?}", String::from_utf8_lossy(&out));
            prop_assert!(!out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
            let names: Vec<String> = r.headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
            prop_assert_eq!(names.iter().filter(|n| *n == "host").count(), 1);
            for bad in ["connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"] {
                prop_assert!(!names.iter().any(|n| n == bad), "{} forwarded", bad);
            }
            prop_assert!(!names.iter().any(|n| n.contains('_')));
            let lengths: Vec<&httparse::Header> = r.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).collect();
            prop_assert!(lengths.len() <= 1);
            let declared = lengths.first().map(|h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap()).unwrap_or(0);
            prop_assert_eq!(declared, p.body_len);
        }
    }

    #[test]
    fn responses_reach_the_client_framed_as_the_gateway_framed_them(
        status in prop_oneof![Just(200u16), Just(204), Just(304), Just(404), Just(500), Just(103)],
        http10 in any::<bool>(),
        lines in prop::collection::vec(header_line(), 0..12),
        head_method in any::<bool>(),
    ) {
        let mut raw = format!("HTTP/1.{} {status} Whatever\r\n", u8::from(!http10)).into_bytes();
        for l in &lines {
            raw.extend_from_slice(l);
        }
        raw.extend_from_slice(b"\r\n");
        let mut out = Vec::new();
        for cut in [raw.len(), raw.len() / 2, 1] {
            let _ = parse_response(&raw[..cut.min(raw.len())], head_method, &mut out);
        }
        let Ok(Some(head)) = parse_response(&raw, head_method, &mut out) else { return Ok(()) };
        prop_assert_eq!(head.len, raw.len());
        // The client's head is strict HTTP/1.1 ...
        let headers = strict_headers(&out);
        prop_assert!(headers.is_some(), "not strict: {:?}", String::from_utf8_lossy(&out));
        let headers = headers.unwrap();
        prop_assert!(out.starts_with(b"HTTP/1.1 "));
        // ... whose framing, read by a strict parser, is the one the gateway follows.
        let get = |n: &str| headers.iter().filter(|(k, _)| k == n).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let te = get("transfer-encoding");
        let cl = get("content-length");
        prop_assert!(cl.len() <= 1, "two lengths");
        prop_assert!(te.is_empty() || cl.is_empty(), "two framings");
        let closes = get("connection").iter().any(|v| v.eq_ignore_ascii_case(b"close"));
        match &head.framing {
            Framing::Length(n) if head_method || status < 200 || status == 204 || status == 304 => {
                prop_assert_eq!(*n, 0);
            }
            Framing::Length(n) => {
                let strict: u64 = std::str::from_utf8(&cl[0]).unwrap().parse().unwrap();
                prop_assert_eq!(strict, *n);
            }
            Framing::Chunked(_) => {
                prop_assert_eq!(te.len(), 1);
                prop_assert!(te[0].eq_ignore_ascii_case(b"chunked"));
            }
            Framing::UntilClose => prop_assert!(closes, "until close, and the client is told"),
        }
        for bad in ["keep-alive", "proxy-connection", "upgrade"] {
            prop_assert!(get(bad).is_empty(), "{} passed on", bad);
        }
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_are_split(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6),
        ext in any::<bool>(),
        trailer in any::<bool>(),
        splits in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        after in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut body = Vec::new();
        for c in &chunks {
            body.extend_from_slice(format!("{:x}", c.len()).as_bytes());
            if ext {
                body.extend_from_slice(b";name=value");
            }
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n");
        if trailer {
            body.extend_from_slice(b"Expires: never\r\n");
        }
        body.extend_from_slice(b"\r\n");
        let end = body.len();
        body.extend_from_slice(&after);
        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.push(0);
        cuts.push(body.len());
        cuts.sort_unstable();
        let mut c = Chunked::default();
        let mut used = 0;
        for w in cuts.windows(2) {
            if c.done() { break; }
            used += c.feed(&body[w[0]..w[1]]).unwrap();
        }
        prop_assert!(c.done());
        prop_assert_eq!(used, end);

        // Any CRLF of the framing turned into a bare LF is refused, never read past.
        let crlfs: Vec<usize> = body[..end].windows(2).enumerate().filter(|(_, w)| w == b"\r\n").map(|(i, _)| i).collect();
        for at in crlfs {
            // Skip CRLFs inside chunk data.
            let mut bad = body[..end].to_vec();
            bad.remove(at);
            let mut c = Chunked::default();
            match c.feed(&bad) {
                Err(_) => {}
                Ok(n) => prop_assert!(!c.done() || n < bad.len() || chunks.iter().any(|d| d.windows(2).any(|w| w == b"\r\n") || d.contains(&b'\r'))),
            }
        }
    }

    #[test]
    fn garbage_never_panics_the_chunk_reader(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut c = Chunked::default();
        if let Ok(n) = c.feed(&data) {
            prop_assert!(n <= data.len());
        }
    }
}
