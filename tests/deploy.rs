//! Deploy and invoke through the real gateway, with real uv and Python processes.

mod harness;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harness::{eventually, script, Faas};
use serde_json::{json, Value};

#[tokio::test]
async fn original_request_shape_deploys_the_fastapi_echo() {
    let faas = Faas::start().await;
    // Exactly the original's body: wrapped base64, a dot file, option.user and option.replica.
    let body = json!({
        "script": harness::b64_wrapped(&script("examples/echo/main.py")),
        "dot_file": harness::b64_wrapped(&script("examples/echo/.env")),
        "option": {"user": "frank", "replica": 1},
    });
    let (status, reply) = faas.admin("POST", "/admin/python", Some(body)).await;
    assert_eq!(status, 200, "{reply}\n{}", faas.log_text());
    assert_eq!(reply["code"], 200);
    assert_eq!(reply["message"], "success");
    let name = reply["name"].as_str().unwrap();
    assert!(name.starts_with("service-"), "{name}");
    let url = reply["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://") && url.ends_with(&format!("/gateway/{name}")),
        "{url}"
    );

    let resp = faas
        .http
        .post(faas.url(&format!("/gateway/{name}/echo/")))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["received_message"], "hi");
    assert_eq!(
        v["hidden_message"],
        "the platform passed this from the dot file"
    );
}

#[tokio::test]
async fn path_query_body_and_forwarded_headers_reach_the_function() {
    let faas = Faas::start().await;
    let (s, r) = faas
        .deploy(
            "tool",
            &script("tests/functions/tool.py"),
            "GREETING=\"hi there\"\n",
            1,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let resp = faas
        .http
        .put(faas.url("/gateway/tool/a/b/?x=1&y=two"))
        .header("Host", "faas.example:8080")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/a/b/");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["body"], "the body");
    assert_eq!(v["headers"]["x-forwarded-prefix"], "/gateway/tool");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(v["headers"]["x-forwarded-host"], "faas.example:8080");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    // The bare function URL maps to `/`.
    let (s, body) = faas.call("/gateway/tool").await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["path"], "/");
    // The dot file's entries are the function's environment.
    assert_eq!(
        faas.call("/gateway/tool/env/GREETING").await,
        (200, "hi there".into())
    );
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let faas = Faas::start().await;
    let (s, r) = faas
        .deploy("sse", &script("tests/functions/tool.py"), "", 1)
        .await;
    assert_eq!(s, 200, "{r}");
    let start = Instant::now();
    let resp = faas.get("/gateway/sse/events").await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        arrivals.push(start.elapsed());
    }
    assert_eq!(text.matches("data: event").count(), 5, "{text}");
    // The function sends an event every 0.4 s: the first must arrive long before the last.
    assert!(
        arrivals.len() >= 3,
        "events were buffered into {} chunk(s)",
        arrivals.len()
    );
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(1200),
        "first and last event only {spread:?} apart"
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let faas = Faas::start().await;
    let (s, r) = faas
        .deploy("ws", &script("tests/functions/tool.py"), "", 1)
        .await;
    assert_eq!(s, 200, "{r}");
    let port = faas.port;
    tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            sock,
            "GET /gateway/ws/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            sock.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        for msg in [&b"ping-1"[..], b"second message"] {
            sock.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            sock.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn list_get_update_delete_leave_no_process_behind() {
    let faas = Faas::start().await;
    let tool = script("tests/functions/tool.py");
    let (s, r) = faas.deploy("crud", &tool, "VERSION=v1\n", 2).await;
    assert_eq!(s, 200, "{r}");
    let (s, list) = faas.admin("GET", "/admin/functions", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["functions"][0]["name"], "crud");
    let (s, one) = faas.admin("GET", "/admin/functions/crud", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (one["replicas"].as_u64(), one["ready_replicas"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(one["user"], "frank");
    assert_eq!(faas.call("/gateway/crud/version").await, (200, "v1".into()));

    // Update: the new version is ready before the old one goes.
    let body = json!({"script": harness::b64_wrapped(&tool), "dot_file": harness::b64_wrapped("VERSION=v2\n")});
    let (s, r) = faas.admin("PUT", "/admin/functions/crud", Some(body)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["version"], 2);
    assert_eq!(faas.call("/gateway/crud/version").await, (200, "v2".into()));
    // The old version's processes (sandbox and interpreter) go.
    let v1 = format!("{}/functions/crud/v1/", faas.state.display());
    assert!(
        eventually(Duration::from_secs(10), || harness::processes_mentioning(
            &v1
        )
        .is_empty())
        .await,
        "v1 still runs: {:?}",
        harness::processes_mentioning(&v1)
    );

    // Scale.
    let (s, r) = faas
        .admin(
            "POST",
            "/admin/functions/crud/scale",
            Some(json!({"replicas": 1})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["replicas"], 1);

    // Delete removes everything, processes included.
    assert!(!faas.replica_processes().is_empty());
    let (s, _) = faas.admin("DELETE", "/admin/functions/crud", None).await;
    assert_eq!(s, 204);
    assert_eq!(faas.call("/gateway/crud/version").await.0, 404);
    assert_eq!(
        faas.admin("GET", "/admin/functions/crud", None).await.0,
        404
    );
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/crud", None).await.0,
        404
    );
    let left = faas.replica_processes();
    assert!(left.is_empty(), "processes left after delete: {left:?}");
}

#[tokio::test]
async fn logs_show_the_function_output() {
    let faas = Faas::start().await;
    let (s, r) = faas
        .deploy(
            "logs",
            &script("tests/functions/tool.py"),
            "VERSION=v7\n",
            1,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let resp = faas.get("/admin/functions/logs/logs?tail=5").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("tool v7 listening on"), "{text}");
    assert_eq!(
        faas.admin("GET", "/admin/functions/nope/logs", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn scripts_that_ignore_port_still_work_and_a_second_replica_says_port_in_use() {
    let faas = Faas::start().await;
    let fixed = harness::free_port();
    let dot = format!("FIXED_PORT={fixed}\n");
    let tool = script("tests/functions/tool.py");
    let (s, r) = faas.deploy("fixed", &tool, &dot, 1).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        faas.call("/gateway/fixed/version").await,
        (200, "v1".into())
    );

    let (s, r) = faas.deploy("fixed-two", &tool, &dot, 2).await;
    assert_eq!(s, 422, "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains("port in use"), "{msg}");
    // The failed deploy left nothing behind and did not disturb the first function.
    assert_eq!(
        faas.admin("GET", "/admin/functions/fixed-two", None)
            .await
            .0,
        404
    );
    assert_eq!(
        faas.call("/gateway/fixed/version").await,
        (200, "v1".into())
    );
}

#[tokio::test]
async fn a_crashed_replica_is_restarted() {
    let faas = Faas::start().await;
    let (s, r) = faas
        .deploy("crashy", &script("tests/functions/tool.py"), "", 1)
        .await;
    assert_eq!(s, 200, "{r}");
    let _ = faas.call("/gateway/crashy/crash").await;
    let mut answered = false;
    for _ in 0..100 {
        if faas.call("/gateway/crashy/version").await == (200, "v1".into()) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "{}", faas.log_text());
    let (_, logs) = faas.call("/admin/functions/crashy/logs").await;
    assert!(
        logs.contains("crashing on request") && logs.contains("restarting"),
        "{logs}"
    );
}

/// Reads one response with a `Content-Length` body from `s`, keeping what follows in `buf`.
fn read_response(
    s: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    head_only: bool,
) -> (String, Vec<u8>) {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let len = if head_only { 0 } else { len };
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "closed mid-body after {head}");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return (head, body);
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn keep_alive_pipelining_and_bodies_small_large_and_chunked_pass_intact() {
    let faas = Faas::start().await;
    faas.deploy_ok("tool", "tests/functions/tool.py", "", 1)
        .await;
    let addr = faas
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // Pipelined requests on one connection answer in order; HEAD has no body and the
    // connection carries on.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"GET /gateway/tool/first HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /gateway/tool/second?x=2 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    for (path, query) in [("/first", ""), ("/second", "x=2")] {
        let (head, body) = read_response(&mut s, &mut buf, false);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["path"].as_str(), v["query"].as_str()),
            (Some(path), Some(query))
        );
    }
    s.write_all(b"HEAD /gateway/tool/ HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, &mut buf, true);
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("Content-Length: 11"),
        "{head}"
    );
    assert!(body.is_empty());
    s.write_all(b"GET /gateway/tool/third HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, &mut buf, false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["path"],
        "/third"
    );

    // Request bodies: small and small chunked (the fast path), large (Pingora's proxy).
    let pattern = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let sum = |b: &[u8]| b.iter().map(|&x| x as u64).sum::<u64>() % (1 << 32);
    // The function's length and byte sum of what it received.
    let digest = |body: reqwest::Body| async {
        let resp = faas
            .http
            .post(faas.url("/gateway/tool/digest"))
            .body(body)
            .send()
            .await
            .unwrap();
        resp.json::<Value>().await.unwrap()
    };
    for n in [10_000, 200_000] {
        let body = pattern(n);
        let v = digest(body.clone().into()).await;
        assert_eq!(
            (v["len"].as_u64(), v["sum"].as_u64()),
            (Some(n as u64), Some(sum(&body)))
        );
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(pattern(5000))).collect();
    let v = digest(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .await;
    // Decoded by the gateway and sent with a Content-Length, as nginx does: a function
    // without chunked request support (Python's http.server) reads it.
    assert_eq!(v["chunked"], false);
    assert_eq!(
        (v["len"].as_u64(), v["sum"].as_u64()),
        (Some(50_000), Some(sum(&pattern(5000)) * 10 % (1 << 32)))
    );

    // A large response arrives whole.
    let resp = faas.get("/gateway/tool/big?n=3000000").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), pattern(3_000_000));
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_frees_its_slot_at_once() {
    let faas = Faas::start().await;
    faas.deploy_ok("tool", "tests/functions/tool.py", "", 1)
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = impatient
        .get(faas.url("/gateway/tool/slow?s=5"))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up first");
    // The function still works for seconds; the gateway let the request go with its client.
    let freed = faas
        .wait_status("tool", "inflight", Duration::from_secs(3), |v| v == 0)
        .await;
    assert!(
        freed && started.elapsed() < Duration::from_secs(4),
        "inflight stayed up"
    );
    let (_, metrics) = faas.call("/metrics").await;
    assert_eq!(
        faas.metric("faas_gateway_requests_total{code=\"499\",function=\"tool\"}")
            .await,
        1.0,
        "{metrics}"
    );
}
