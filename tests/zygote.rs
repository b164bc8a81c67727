//! Cold starts through the zygote: a function at zero is forked from its version's zygote, and
//! every script still serves — forked, or started directly when the zygote path cannot work for
//! it. Deleting a function leaves no process; a zygote killed with SIGKILL is replaced.

mod harness;

use std::time::Duration;

use harness::{eventually, Faas};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the function's zygote is warm; its status.
async fn warm(faas: &Faas, name: &str) -> Value {
    let ok = faas
        .wait_status(name, "zygote", WAIT, |z| z["state"] == "warm")
        .await;
    let z = faas.status(name, "zygote").await;
    assert!(
        ok,
        "the zygote of {name} is not warm: {z}\n{}",
        faas.log_text()
    );
    z
}

/// Scales to zero and waits until no replica is ready.
async fn to_zero(faas: &Faas, name: &str) {
    scale(faas, name, 0).await;
    assert!(
        faas.wait_status(name, "ready_replicas", WAIT, |r| r == 0)
            .await
    );
}

async fn scale(faas: &Faas, name: &str, n: u32) {
    let (s, r) = faas
        .admin(
            "POST",
            &format!("/admin/functions/{name}/scale"),
            Some(json!({"replicas": n})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
}

/// Replica starts of `name` by `path`, from its status.
async fn starts(faas: &Faas, name: &str, path: &str) -> u64 {
    faas.status(name, "zygote").await["starts"][path]
        .as_u64()
        .unwrap_or(0)
}

async fn logs(faas: &Faas, name: &str) -> String {
    let resp = faas
        .request("GET", &format!("/admin/functions/{name}/logs?tail=200"))
        .send()
        .await
        .unwrap();
    resp.text().await.unwrap()
}

/// The function's logs, once they contain `needle` (or after 10 s).
async fn wait_logs(faas: &Faas, name: &str, needle: &str) -> String {
    for _ in 0..200 {
        let text = logs(faas, name).await;
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    logs(faas, name).await
}

#[tokio::test]
async fn functions_at_zero_answer_their_first_request_through_the_zygote() {
    let faas = Faas::start().await;
    faas.deploy_ok(
        "hello",
        "examples/hello/main.py",
        "GREETING=\"the zygote\"\n",
        1,
    )
    .await;
    faas.deploy_ok(
        "echo",
        "examples/echo/main.py",
        "HIDDEN_MESSAGE=forked\n",
        1,
    )
    .await;
    for name in ["hello", "echo"] {
        let z = warm(&faas, name).await;
        assert!(z["rss_bytes"].as_u64().unwrap_or(0) > 0, "{z}");
        to_zero(&faas, name).await;
    }

    // First requests at zero: forked, with the dot file's environment.
    let (s, body) = faas.call("/gateway/hello/first?x=1").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("hello from the zygote"), "{body}");
    let r = faas
        .request("POST", "/gateway/echo/echo/")
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"hidden_message": "forked", "received_message": "hi"})
    );
    for name in ["hello", "echo"] {
        assert_eq!(starts(&faas, name, "zygote").await, 1, "{name}");
        assert_eq!(starts(&faas, name, "fallback").await, 0, "{name}");
        let series = format!("faas_replica_starts_total{{function=\"{name}\",path=\"zygote\"}}");
        assert_eq!(faas.metric(&series).await, 1.0, "{series}");
    }

    // The forked replica's output reaches the logs endpoint under its own tag.
    // (r1 was started directly at deploy; the forked one is the second to say so.)
    let mut text = String::new();
    for _ in 0..200 {
        text = logs(&faas, "hello").await;
        if text.matches("hello listening on").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text.matches("hello listening on").count(), 2, "{text}");

    // Deleting the functions stops their zygotes and children: nothing of them runs.
    assert!(!faas.replica_processes().is_empty());
    for name in ["hello", "echo"] {
        let (s, _) = faas
            .admin("DELETE", &format!("/admin/functions/{name}"), None)
            .await;
        assert_eq!(s, 204);
    }
    assert!(
        eventually(Duration::from_secs(10), || faas
            .replica_processes()
            .is_empty())
        .await,
        "processes left: {:?}",
        faas.replica_processes()
    );
}

#[tokio::test]
async fn scripts_that_do_not_suit_a_fork_still_serve() {
    let faas = Faas::start().await;
    for (name, path) in [
        ("ticker", "tests/functions/thread_at_import.py"),
        ("seeded", "tests/functions/seeded_random.py"),
        ("late", "tests/functions/late_import.py"),
    ] {
        faas.deploy_ok(name, path, "", 1).await;
    }

    // A thread started at import time runs in the forked child.
    warm(&faas, "ticker").await;
    to_zero(&faas, "ticker").await;
    let (s, body) = faas.call("/gateway/ticker/").await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["ticks"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(starts(&faas, "ticker", "zygote").await, 1);

    // `random` is reseeded in every child; seeding it at module level still works.
    warm(&faas, "seeded").await;
    let mut unseeded = Vec::new();
    for _ in 0..2 {
        to_zero(&faas, "seeded").await;
        let (s, body) = faas.call("/gateway/seeded/").await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["seeded"],
            json!(0.6394267984578837),
            "random.seed(42) then random()"
        );
        unseeded.push(v["unseeded"].clone());
    }
    assert_eq!(starts(&faas, "seeded", "zygote").await, 2);
    assert_ne!(
        unseeded[0], unseeded[1],
        "two children drew the same number"
    );

    // An import that fails in the zygote (its module is written by the script's own code):
    // the zygote path is off for the version, with its reason, and the function serves.
    let z = faas
        .wait_status("late", "zygote", WAIT, |z| z["state"] == "off")
        .await;
    let status = faas.status("late", "zygote").await;
    assert!(z, "{status}");
    assert!(
        status["why_off"]
            .as_str()
            .unwrap_or("")
            .contains("helper_mod"),
        "{status}"
    );
    to_zero(&faas, "late").await;
    let (s, body) = faas.call("/gateway/late/").await;
    assert_eq!((s, body.as_str()), (200, "written at start"));
    assert_eq!(starts(&faas, "late", "zygote").await, 0);
    let text = wait_logs(&faas, "late", "start without the zygote").await;
    assert!(text.contains("start without the zygote"), "{text}");
}

#[tokio::test]
async fn a_killed_zygote_is_replaced_and_the_next_cold_start_uses_it() {
    let faas = Faas::start().await;
    faas.deploy_ok("hello", "examples/hello/main.py", "", 1)
        .await;
    let z = warm(&faas, "hello").await;
    let old = z["pid"].as_i64().expect("zygote pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        faas.wait_status("hello", "zygote", WAIT, |z| z["state"] == "warm"
            && z["pid"].as_i64().is_some_and(|p| p as i32 != old))
            .await,
        "{}",
        faas.status("hello", "zygote").await
    );
    to_zero(&faas, "hello").await;
    let (s, body) = faas.call("/gateway/hello/").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(starts(&faas, "hello", "zygote").await, 1);
}

#[tokio::test]
async fn without_the_zygote_replicas_start_directly() {
    let faas = Faas::start_with(&[("FAAS_ZYGOTE", "false")]).await;
    faas.deploy_ok("hello", "examples/hello/main.py", "", 1)
        .await;
    assert_eq!(faas.status("hello", "zygote").await["state"], "disabled");
    to_zero(&faas, "hello").await;
    let (s, body) = faas.call("/gateway/hello/").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(starts(&faas, "hello", "direct").await, 2);
    assert_eq!(starts(&faas, "hello", "zygote").await, 0);
}

#[tokio::test]
async fn a_zygote_and_its_children_left_by_a_killed_faas_are_stopped_at_the_next_start() {
    // Unsandboxed, nothing ties them to faas's life: the next start must find them.
    let mut faas = Faas::start_with(&[("FAAS_SANDBOX", "false")]).await;
    faas.deploy_ok("left", "examples/hello/main.py", "", 1)
        .await;
    let zygote = warm(&faas, "left").await["pid"].as_i64().unwrap() as i32;
    to_zero(&faas, "left").await;
    let (s, _) = faas.call("/gateway/left/").await;
    assert_eq!(s, 200);
    assert_eq!(starts(&faas, "left", "zygote").await, 1);
    let before = faas.replica_processes();
    assert!(before.contains(&zygote), "{before:?}");
    assert!(before.len() >= 2, "the zygote and its child: {before:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(faas.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    faas.restart().await;
    let alive = |pid: &i32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(
        eventually(Duration::from_secs(10), || !before.iter().any(alive)).await,
        "still running: {:?}",
        before.iter().filter(|p| alive(p)).collect::<Vec<_>>()
    );
    // The function comes back, with a zygote of its own.
    let (s, _) = faas.call("/gateway/left/").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_zygote_goes_after_its_ttl_at_zero_and_comes_back_with_the_next_request() {
    let faas = Faas::start_with(&[("FAAS_ZYGOTE_TTL", "1s")]).await;
    faas.deploy_ok("ttl", "examples/hello/main.py", "", 1).await;
    let pid = warm(&faas, "ttl").await["pid"].as_i64().unwrap();
    to_zero(&faas, "ttl").await;
    assert!(
        faas.wait_status("ttl", "zygote", WAIT, |z| z["state"] == "stopped")
            .await
    );
    assert!(
        eventually(Duration::from_secs(5), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists())
        .await,
        "the zygote process is still there"
    );
    // At zero for longer than the TTL: the next request starts the slow way...
    let (s, body) = faas.call("/gateway/ttl/").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(starts(&faas, "ttl", "direct").await, 2);
    // ...and brings the zygote back for the one after.
    warm(&faas, "ttl").await;
    to_zero(&faas, "ttl").await;
    let (s, _) = faas.call("/gateway/ttl/").await;
    assert_eq!(s, 200);
    assert_eq!(starts(&faas, "ttl", "zygote").await, 1);
}
