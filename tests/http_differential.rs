//! Differential test: where does each message end, for the fast path's parsers and for h11 (an
//! independent HTTP/1.1 implementation, from PyPI)? A corpus of ordinary and hostile requests
//! and responses goes to both; any message both accept must end at the same byte. Where one
//! refuses what the other accepts, only the documented differences pass: the gateway takes the
//! response quirks Pingora and nginx take (spaces before the colon, folded lines, bare LF in a
//! head) and writes them anew for the client; it is stricter than h11 elsewhere.

mod harness;

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use proxy::fastpath::http1::{parse_request, parse_response, Framing, Parsed};
use serde_json::{json, Value};

/// A message of the corpus.
struct Case {
    kind: &'static str,
    data: Vec<u8>,
    head_method: bool,
    /// The gateway may accept it while h11 refuses (a head quirk it normalises).
    lenient: bool,
}

fn req(data: &str) -> Case {
    Case {
        kind: "request",
        data: data.as_bytes().to_vec(),
        head_method: data.starts_with("HEAD"),
        lenient: false,
    }
}

fn resp(data: &str) -> Case {
    Case {
        kind: "response",
        data: data.as_bytes().to_vec(),
        head_method: false,
        lenient: false,
    }
}

fn corpus() -> Vec<Case> {
    let mut c = vec![
        req("GET /gateway/f/ HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\n\r\n"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcX"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabcX"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabcX"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length:  3 \r\n\r\nabcX"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 003\r\n\r\nabcX"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabcX"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        req("POST /gateway/f/ HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\naX"),
        req("GET /gateway/f/ HTTP/1.1\nHost: h\n\nX"),
        req("GET /gateway/f/ HTTP/1.1\r\n\r\nX"),
        req("GET /gateway/f/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nX"),
        req("HEAD /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\nX"),
        req("DELETE /gateway/f/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        req("GET /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nokGET"),
        req("GET /gateway/f/ HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: 2\u{a0}\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nok\r\n0\r\nT: 1\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0002\r\nok\r\n0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\n0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX\r\n0\r\n\r\n"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nabc"),
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
        resp("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
        resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nX"),
        resp("HTTP/1.0 200 OK\r\n\r\nall of this"),
        resp("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokX"),
        resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nokX"),
        resp("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"),
        resp("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nX"),
        resp("HTTP/1.1 200 OK\r\nX_Weird: 1\r\nContent-Length: 1\r\n\r\naX"),
    ];
    let mut head = resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX");
    head.head_method = true;
    c.push(head);
    // Quirks the gateway tolerates in responses, as Pingora and nginx do, and normalises.
    for quirk in [
        "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nokX",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX",
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nokX",
        "HTTP/1.1 200 OK\nContent-Length: 2\n\nokX",
    ] {
        let mut q = resp(quirk);
        q.lenient = true;
        c.push(q);
    }
    // Every body length around a few framings, and pipelined leftovers.
    for n in [0usize, 1, 5, 17, 300] {
        let body = "b".repeat(n);
        c.push(resp(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n{body}NEXT"
        )));
        c.push(resp(
            &format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\nNEXT"
        )
            .replace("0\r\n\r\n0\r\n\r\n", "0\r\n\r\n"),
        ));
        c.push(req(&format!(
            "PUT /gateway/f/ HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{body}NEXT"
        )));
    }
    c
}

/// Where the gateway's fast path says the message ends; `None` when it does not take it.
fn ours(case: &Case) -> Option<usize> {
    let data = &case.data;
    if case.kind == "request" {
        let mut out = Vec::new();
        return match parse_request(data, "/gateway", "10.0.0.1", 1 << 20, &mut out) {
            Parsed::Forward(p) if p.head_len + p.body_len <= data.len() => {
                Some(p.head_len + p.body_len)
            }
            _ => None,
        };
    }
    let head = parse_response(data, case.head_method, &mut Vec::new()).ok()??;
    let body = &data[head.len..];
    match head.framing {
        Framing::Length(n) => ((n as usize) <= body.len()).then_some(head.len + n as usize),
        Framing::Chunked(mut c) => {
            let used = c.feed(body).ok()?;
            c.done().then_some(head.len + used)
        }
        Framing::UntilClose => Some(data.len()),
    }
}

#[test]
fn where_messages_end_agrees_with_h11() {
    let cases = corpus();
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "kind": c.kind,
                "data": base64::engine::general_purpose::STANDARD.encode(&c.data),
                "head_method": c.head_method,
            })
        })
        .collect();
    let python = harness::tool("python");
    let mut child = Command::new(&python)
        .arg(harness::repo().join("tests/http/h11_frame.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (./dev setup installs h11): {e}",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "h11_frame.py failed (is h11 installed? ./dev setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), cases.len());
    let mut disagreements = Vec::new();
    let (mut both, mut stricter) = (0, 0);
    for (case, h11) in cases.iter().zip(&theirs) {
        let shown = String::from_utf8_lossy(&case.data);
        let h11_end = h11["end"].as_u64().map(|e| e as usize);
        match (ours(case), h11_end) {
            (Some(a), Some(b)) if a == b => both += 1,
            (Some(a), Some(b)) => {
                disagreements.push(format!("{shown:?}: ends at {a} for us, {b} for h11"))
            }
            (Some(a), None) if !case.lenient => disagreements.push(format!(
                "{shown:?}: we take it (ends at {a}), h11 refuses: {}",
                h11["error"]
            )),
            (Some(_), None) => {}
            (None, _) => stricter += 1,
        }
    }
    eprintln!(
        "{} messages: {both} end at the same byte for both; {stricter} refused by us (or left \
         to Pingora)",
        cases.len()
    );
    assert!(
        disagreements.is_empty(),
        "disagreements:\n{}",
        disagreements.join("\n")
    );
}
