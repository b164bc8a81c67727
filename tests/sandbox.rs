//! Secure by default on one machine: a hostile function cannot read the admin token or its
//! neighbours' secrets, see other processes, write outside its own directories, call the admin
//! API, or exhaust memory and processes — while its neighbour keeps answering.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::{b64_wrapped, eventually, script, Faas};
use serde_json::{json, Value};

const TOKEN: &str = "the-admin-token-0123456789";
const HOST_SECRET: &str = "host-cloud-credential";

/// GET a hostile endpoint; its JSON answer.
async fn probe(faas: &Faas, path: &str) -> Value {
    let (status, text) = faas.call(&format!("/gateway/hostile{path}")).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// Percent-encodes a path or URL for a query string.
fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_hostile_function_cannot_take_over_the_platform_or_the_machine() {
    let faas = Faas::start_with(&[
        ("FAAS_ADMIN_TOKEN", TOKEN),
        ("AWS_SECRET_ACCESS_KEY", HOST_SECRET),
    ])
    .await;
    faas.deploy_ok(
        "neighbour",
        "tests/functions/tool.py",
        "VERSION=neighbour-secret\n",
        1,
    )
    .await;
    let body = json!({
        "script": b64_wrapped(&script("tests/functions/hostile.py")),
        "dot_file": b64_wrapped("OWN=mine\n"),
        "option": {"name": "hostile", "replica": 1, "memory_limit": "128Mi", "max_processes": 32},
    });
    let (s, r) = faas.admin("POST", "/admin/python", Some(body)).await;
    assert_eq!(s, 200, "{r}\n{}", faas.log_text());

    // The neighbour is called all along; every call must succeed.
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, url) = (faas.http.clone(), faas.url("/gateway/neighbour/version"));
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Its environment is its own: PORT, a minimal PATH/HOME/LANG and its dot file.
    let env = probe(&faas, "/env").await;
    let env = env.as_object().unwrap();
    assert_eq!(env["OWN"], "mine");
    assert!(env.contains_key("PORT"));
    for (k, v) in env {
        let v = v.as_str().unwrap_or_default();
        assert!(
            !v.contains(TOKEN) && !v.contains(HOST_SECRET) && !k.starts_with("FAAS_"),
            "{k}={v} reached the function"
        );
    }

    // The admin token, its neighbour's script and dot file: hidden.
    let state = faas.state.display().to_string();
    let neighbour = format!("{state}/functions/neighbour/v1");
    for path in [
        format!("{state}/admin-token"),
        format!("{neighbour}/main.py"),
        format!("{neighbour}/.env"),
        format!("{neighbour}/spec.json"),
        format!("/proc/{}/environ", faas.pid()),
    ] {
        let r = probe(&faas, &format!("/read?path={}", q(&path))).await;
        assert_eq!(r["ok"], false, "read {path}: {r}");
    }
    let listed = probe(
        &faas,
        &format!("/list?path={}", q(&format!("{state}/functions"))),
    )
    .await;
    assert!(
        !listed.to_string().contains("neighbour"),
        "the state directory shows other functions: {listed}"
    );

    // Only its own processes.
    let pids = probe(&faas, "/processes").await;
    assert!(
        pids.as_array().unwrap().len() <= 3,
        "it sees other processes: {pids}"
    );

    // Read-only except its working directory and its private /tmp.
    let me = probe(&faas, "/whoami").await;
    let cwd = me["cwd"].as_str().unwrap().to_string();
    let home = std::env::var("HOME").unwrap_or("/root".into());
    for (path, writable) in [
        (format!("{cwd}/scratch"), true),
        ("/tmp/scratch".to_string(), true),
        (format!("{state}/pwned"), false),
        (format!("{home}/pwned"), false),
        ("/etc/pwned".to_string(), false),
        (format!("{}/pwned", harness::repo().display()), false),
    ] {
        let r = probe(&faas, &format!("/write?path={}", q(&path))).await;
        assert_eq!(r["ok"], writable, "write {path}: {r}");
        if !writable {
            assert!(!std::path::Path::new(&path).exists(), "{path} was written");
        }
    }
    assert!(
        !std::path::Path::new("/tmp/scratch").exists(),
        "its /tmp is the host's"
    );

    // No admin API without the token.
    let admin = faas.url("/admin/functions");
    let code = probe(&faas, &format!("/admin?url={}", q(&admin))).await;
    assert_eq!(code, 401);

    // Processes: refused beyond option.max_processes.
    let spawned = probe(&faas, "/spawn?n=200").await;
    assert!(
        spawned["started"].as_u64().unwrap() < 32 && !spawned["error"].is_null(),
        "{spawned}"
    );

    // Memory: killed beyond option.memory_limit, restarted, and serving again.
    let (status, _) = faas.call("/gateway/hostile/hog?mb=400").await;
    assert_eq!(status, 502, "a replica over its memory limit is killed");
    assert!(
        eventually(Duration::from_secs(10), || faas
            .log_text()
            .contains("went over its memory limit"))
        .await,
        "{}",
        faas.log_text()
    );
    let (_, logs) = faas.call("/admin/functions/hostile/logs").await;
    assert!(
        logs.contains("went over its memory limit of 128 MiB"),
        "{logs}"
    );
    assert!(
        faas.wait_status("hostile", "ready_replicas", Duration::from_secs(20), |v| v
            == 1)
            .await
    );
    assert_eq!(probe(&faas, "/env").await["OWN"], "mine");

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the neighbour failed");
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        faas.call("/gateway/neighbour/version").await,
        (200, "neighbour-secret".into())
    );
}

#[tokio::test]
async fn a_fresh_start_generates_a_private_token_and_refuses_calls_without_it() {
    // The harness sets no token: faas makes one.
    let faas = Faas::start().await;
    let file = faas.state.join("admin-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(faas.log_text().contains("export FAAS_ADMIN_TOKEN=$(cat"));
    let anonymous = faas
        .http
        .get(faas.url("/admin/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(faas.admin("GET", "/admin/functions", None).await.0, 200);
    // The rest stays open.
    for path in ["/health", "/metrics"] {
        assert_eq!(faas.call(path).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn opening_the_admin_api_takes_a_named_switch_and_warns() {
    let faas = Faas::start_with(&[("FAAS_ADMIN_OPEN", "true")]).await;
    assert!(faas.token.is_none());
    assert!(faas.log_text().contains("FAAS_ADMIN_OPEN=true"));
    assert_eq!(faas.call("/admin/functions").await.0, 200);
}

#[test]
fn without_a_working_sandbox_faas_refuses_to_start_and_says_how_to_proceed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faas"))
        .arg("serve")
        .env("FAAS_RUNTIME", "local")
        .env("FAAS_STATE_DIR", tmp.path())
        .env("PORT", harness::free_port().to_string())
        .env("FAAS_BWRAP", "/bin/false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sandbox cannot start") && err.contains("FAAS_SANDBOX=false"),
        "{err}"
    );
}
