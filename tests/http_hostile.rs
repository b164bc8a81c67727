//! Hostile bytes from both sides, end to end through the real binary: a raw socket client, and
//! a function that answers with malformed or forged responses (`tests/functions/misbehaving.py`).
//! Whatever the function sends, the client gets either a clean HTTP/1.1 response or a 502 — and
//! never a byte that would make it read the next response from somewhere else.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::Faas;

/// Sends `raw` on a new connection and reads what comes back until the gateway closes it or
/// goes quiet.
fn exchange(faas: &Faas, raw: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", faas.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!("GET /gateway/bad{path} HTTP/1.1\r\nHost: gw\r\n\r\n")
}

#[tokio::test]
async fn hostile_responses_are_normalised_or_refused_and_never_desync_the_client() {
    let faas = Faas::start().await;
    faas.deploy_ok("bad", "tests/functions/misbehaving.py", "", 1)
        .await;

    // Quirks a lenient parser takes: written anew, and the connection stays in step (the
    // request pipelined after it gets its own, real answer).
    let cases = [
        (
            "/space-colon",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "/fold",
            "HTTP/1.1 200 OK\r\nX-Folded: a    b\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "/bare-lf",
            "HTTP/1.1 200 OK\r\nX-Bare: 1\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("/hop", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ];
    for (path, want) in cases {
        let got = exchange(&faas, &(get(path) + &get("/echo")));
        assert!(got.starts_with(want), "{path}: got {got:?}");
        let second = &got[want.len()..];
        assert!(
            second.starts_with("HTTP/1.1 200 OK\r\n") && second.contains("GET /echo HTTP/1.1"),
            "{path}: the next response is not the next request's: {second:?}"
        );
    }

    // Framing nobody may guess at: 502 (or, once the head is out, a closed connection), and
    // nothing after it.
    for path in [
        "/chunk-bare-lf",
        "/last-chunk-bare-lf",
        "/cl-plus",
        "/cl-nbsp",
        "/te-and-cl",
    ] {
        let got = exchange(&faas, &(get(path) + &get("/echo")));
        let refused = got.starts_with("HTTP/1.1 502 ");
        let cut = got.starts_with("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(refused || cut, "{path}: got {got:?}");
        assert!(
            !got.contains("GET /echo"),
            "{path}: the connection went on after a broken response: {got:?}"
        );
    }

    // A forged second response after a complete one never reaches the next request.
    let got = exchange(&faas, &(get("/smuggle") + &get("/echo")));
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        "{got:?}"
    );
    assert!(
        !got.contains("forged"),
        "the forgery reached the client: {got:?}"
    );
    assert!(got.contains("GET /echo HTTP/1.1"), "{got:?}");
    // And not the next client on a pooled connection either.
    for _ in 0..5 {
        let got = exchange(&faas, &get("/echo"));
        assert!(!got.contains("forged"), "{got:?}");
    }
}

#[tokio::test]
async fn hostile_requests_get_400_and_hop_by_hop_headers_stop_at_the_gateway() {
    let faas = Faas::start().await;
    faas.deploy_ok("bad", "tests/functions/misbehaving.py", "", 1)
        .await;
    // RFC 9112 §3.2, on both paths (HTTP/1.1 with a small body: fast path; chunked: Pingora).
    for raw in [
        "GET /gateway/bad/echo HTTP/1.1\r\n\r\n",
        "GET /gateway/bad/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST /gateway/bad/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /gateway/bad/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /gateway/bad/echo HTTP/1.1\r\nHost: a\r\nConnection: Host\r\n\r\n",
    ] {
        let got = exchange(&faas, raw);
        assert!(got.starts_with("HTTP/1.1 400 "), "{raw:?}: {got:?}");
    }
    // What the function receives: no hop-by-hop header, none the client named in
    // Connection, no underscored alias of ours, one Content-Length.
    let raw = "POST /gateway/bad/echo HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, X-Secret\r\n\
               X-Secret: s\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Connection: x\r\n\
               X_Forwarded_For: 6.6.6.6\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi";
    let got = exchange(&faas, raw);
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");
    let seen = got
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "te:",
        "proxy-connection",
        "x_forwarded_for",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the function: {seen}");
    }
    assert_eq!(seen.matches("content-length").count(), 1, "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
}

#[tokio::test]
async fn a_client_leaving_mid_response_frees_the_slot_and_the_functions_connection_at_once() {
    let faas = Faas::start().await;
    faas.deploy_ok("sse", "tests/functions/tool.py", "", 1)
        .await;
    let mut s = TcpStream::connect(("127.0.0.1", faas.port)).unwrap();
    s.write_all(b"GET /gateway/sse/events HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 256];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200 OK"));
    assert_eq!(faas.status("sse", "inflight").await, 1);
    drop(s); // the stream runs for 2 s more
    let left = std::time::Instant::now();
    assert!(
        faas.wait_status("sse", "inflight", Duration::from_secs(5), |v| v == 0)
            .await
    );
    assert!(
        left.elapsed() < Duration::from_millis(1500),
        "the slot was held until the function finished ({:?})",
        left.elapsed()
    );
}

/// The request head a function received, as `/echo` of the misbehaving function answers it:
/// its header lines, lower-cased and sorted.
fn received(got: &str) -> Vec<String> {
    let body = got
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let mut lines: Vec<String> = body
        .split("\r\n")
        .skip(1) // the request line
        .filter(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn both_paths_forward_the_same_request_head() {
    let faas = Faas::start().await;
    faas.deploy_ok("bad", "tests/functions/misbehaving.py", "", 1)
        .await;
    let head = |len: usize| {
        format!(
            "POST /gateway/bad/echo HTTP/1.1\r\nHost: gw\r\nX-Custom: 1\r\nX_Alias: 2\r\n\
             Connection: X-Named\r\nX-Named: 3\r\nX-Forwarded-Host: evil\r\n\
             X-Forwarded-For: 10.9.8.7\r\nKeep-Alive: timeout=3\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // 10 bytes: the fast path. 70 000 bytes (over its 64 KiB): Pingora's proxy.
    let fast = exchange(&faas, &(head(10) + &"a".repeat(10)));
    let pingora = exchange(&faas, &(head(70_000) + &"a".repeat(70_000)));
    let (fast_seen, pingora_seen) = (received(&fast), received(&pingora));
    let without_length = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !l.starts_with("content-length"))
            .cloned()
            .collect()
    };
    assert_eq!(
        without_length(&fast_seen),
        without_length(&pingora_seen),
        "the function saw different heads:\nfast path: {fast:?}\nPingora:   {pingora:?}"
    );
    for line in [
        "x-custom: 1",
        "x-forwarded-host: gw",
        "x-forwarded-for: 10.9.8.7, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-prefix: /gateway/bad",
    ] {
        assert!(
            fast_seen.iter().any(|l| l == line),
            "{line} missing: {fast_seen:?}"
        );
    }
    // And the client's responses have the same shape (status, headers but the length).
    let status = |r: &str| r.lines().next().unwrap_or_default().to_string();
    assert_eq!(status(&fast), status(&pingora));
}

#[tokio::test]
async fn a_replica_that_accepts_but_hangs_leaves_the_rotation_and_comes_back() {
    let faas = Faas::start_with(&[("FAAS_HEALTH_CHECK_INTERVAL", "300ms")]).await;
    faas.deploy_ok("hangs", "tests/functions/hangs.py", "", 2)
        .await;
    // Hang one replica; the client gives up, so the gateway frees its slot at once.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let _ = quick.get(faas.url("/gateway/hangs/hang?s=6")).send().await;
    assert!(
        harness::eventually(Duration::from_secs(5), || faas
            .log_text()
            .contains("out of rotation"))
        .await,
        "{}",
        faas.log_text()
    );
    // Every request now goes to the replica that answers.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = patient
            .get(faas.url("/gateway/hangs/pid"))
            .send()
            .await
            .expect("a request went to the hung replica");
        assert_eq!(r.status(), 200);
        pids.insert(r.text().await.unwrap());
    }
    assert_eq!(pids.len(), 1, "{pids:?}");
    // Once it answers again, it is back.
    assert!(
        harness::eventually(Duration::from_secs(15), || faas
            .log_text()
            .contains("back in rotation"))
        .await,
        "{}",
        faas.log_text()
    );
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_function_is_never_sent_twice() {
    let faas = Faas::start().await;
    faas.deploy_ok("bad", "tests/functions/misbehaving.py", "", 1)
        .await;
    let dropped = || async { faas.call("/gateway/bad/dropped").await.1 };
    // A POST the function read and dropped: 502, and it saw it once.
    let post = exchange(
        &faas,
        "POST /gateway/bad/drop HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(post.starts_with("HTTP/1.1 502 "), "{post:?}");
    assert_eq!(dropped().await, "1");
    // A GET is idempotent: sent again (through the queue), up to the attempts allowed.
    let get = exchange(&faas, "GET /gateway/bad/drop HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert!(get.starts_with("HTTP/1.1 502 "), "{get:?}");
    let after: u32 = dropped().await.parse().unwrap();
    assert!(after > 2, "a GET was not retried: {after}");
}

#[tokio::test]
async fn a_response_cut_after_its_head_closes_the_connection_on_both_paths() {
    let faas = Faas::start().await;
    faas.deploy_ok("bad", "tests/functions/misbehaving.py", "", 1)
        .await;
    // HTTP/1.1 takes the fast path, HTTP/1.0 Pingora's proxy.
    for version in ["1.1", "1.0"] {
        let raw = format!("GET /gateway/bad/truncated HTTP/{version}\r\nHost: gw\r\n\r\n");
        let got = exchange(&faas, &raw);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{version}: {got:?}");
        let body = got
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        assert_eq!(
            body, "ok",
            "HTTP/{version}: the client must see the cut, not an error appended to the body"
        );
    }
}
