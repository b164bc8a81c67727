//! The local runtime's state directory is one `faas serve`'s, and survives `kill -9` at any
//! moment of a deploy, update, scale or delete: after a restart every function is whole or
//! absent, the directory holds nothing half-written, and no replica process is left orphaned.
//! And no lock of a function is held while its update runs uv: it serves and activates meanwhile.

mod harness;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, repo, script, tools_path, uv, Faas};
use serde_json::{json, Value};

#[tokio::test]
async fn a_second_faas_on_the_same_state_directory_is_refused() {
    let faas = Faas::start().await;
    let mut second = Command::new(env!("CARGO_BIN_EXE_faas"))
        .arg("serve")
        .arg("--conf")
        .arg(repo().join("conf/faas.yaml"))
        .env("PORT", free_port().to_string())
        .env("FAAS_LISTEN", "127.0.0.1")
        .env("FAAS_RUNTIME", "local")
        .env("FAAS_STATE_DIR", &faas.state)
        .env("FAAS_UV", uv())
        .env("PATH", tools_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second faas serve on the same state directory kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("another faas") && stderr.contains(&faas.state.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains(&faas.pid().to_string()),
        "names the holder: {stderr}"
    );
    // The first one serves on.
    assert_eq!(faas.get("/health").await.status(), 200);
}

/// What is interrupted.
#[derive(Debug, Clone, Copy)]
enum Op {
    Deploy,
    Update,
    Scale,
    Delete,
}

#[tokio::test]
async fn kill_9_at_any_moment_leaves_every_function_whole_or_absent() {
    let tool_py = script("tests/functions/tool.py");
    let mut faas = Faas::start().await;
    // Kills at several points of each operation: before it starts writing, while uv prepares,
    // while replicas start, once it is (nearly) done.
    for op in [Op::Deploy, Op::Update, Op::Scale, Op::Delete] {
        for delay_ms in [0u64, 150, 500, 1500] {
            let name = format!("{op:?}-{delay_ms}").to_lowercase();
            if !matches!(op, Op::Deploy) {
                let (s, r) = faas.deploy(&name, &tool_py, "VERSION=\"one\"\n", 1).await;
                assert_eq!(s, 200, "{r}\n{}", faas.log_text());
            }
            let url = faas.url("");
            let token = faas.token.clone().unwrap();
            let body = match op {
                Op::Deploy => Some(json!({
                    "script": harness::b64_wrapped(&tool_py),
                    "dot_file": harness::b64_wrapped("VERSION=\"one\"\n"),
                    "option": {"name": name, "replica": 2},
                })),
                Op::Update => Some(json!({"dot_file": harness::b64_wrapped("VERSION=\"two\"\n")})),
                Op::Scale => Some(json!({"replicas": 3})),
                Op::Delete => None,
            };
            let (method, path) = match op {
                Op::Deploy => ("POST", "/admin/python".to_string()),
                Op::Update => ("PUT", format!("/admin/functions/{name}")),
                Op::Scale => ("POST", format!("/admin/functions/{name}/scale")),
                Op::Delete => ("DELETE", format!("/admin/functions/{name}")),
            };
            let call = tokio::spawn(async move {
                let mut req = reqwest::Client::new()
                    .request(method.parse().unwrap(), format!("{url}{path}"))
                    .bearer_auth(token);
                if let Some(b) = body {
                    req = req.json(&b);
                }
                req.send().await.map(|r| r.status().as_u16())
            });
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let killed = faas.pid();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(killed),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let _ = call.await;
            faas.restart().await;
            check(&faas, &name, op, killed).await;
        }
    }
}

/// After a restart: whole or absent, nothing half-written, nothing orphaned.
async fn check(faas: &Faas, name: &str, op: Op, killed: i32) {
    let what = format!("{op:?} of {name} killed");
    let (s, list) = faas.admin("GET", "/admin/functions", None).await;
    assert_eq!(s, 200, "{what}: {list}");
    let listed: Vec<Value> = list["functions"].as_array().unwrap().clone();
    let here = listed.iter().find(|f| f["name"] == name);
    match (op, here) {
        (Op::Update | Op::Scale, None) => {
            panic!("{what}: the function is gone\n{}", faas.log_text())
        }
        (_, None) => assert_eq!(faas.call(&format!("/gateway/{name}/version")).await.0, 404),
        (_, Some(f)) => {
            // Whole: it answers, with the dot file of its committed version.
            let want = if f["version"].as_u64() == Some(1) {
                "one"
            } else {
                "two"
            };
            let got = faas.call(&format!("/gateway/{name}/version")).await;
            assert_eq!(
                got,
                (200, want.to_string()),
                "{what}: {f}\n{}",
                faas.log_text()
            );
        }
    }
    // Nothing half-written: every function directory is committed, with its one version.
    let functions = faas.state.join("functions");
    for ent in std::fs::read_dir(&functions).unwrap().flatten() {
        let dir = ent.path();
        let spec: Value = serde_json::from_slice(
            &std::fs::read(dir.join("spec.json"))
                .unwrap_or_else(|e| panic!("{what}: {} has no spec.json: {e}", dir.display())),
        )
        .unwrap_or_else(|e| panic!("{what}: {} has a corrupt spec.json: {e}", dir.display()));
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            vec!["spec.json".to_string(), format!("v{}", spec["version"])],
            "{what}: {}",
            dir.display()
        );
        assert_no_temporaries(&dir, &what);
    }
    let trash = std::fs::read_dir(faas.state.join("trash")).unwrap().count();
    assert_eq!(trash, 0, "{what}: the trash was not emptied");
    // Nothing orphaned: every process of the state directory descends from the new faas.
    // (Those of the killed one are being killed meanwhile: SIGKILL takes a moment.)
    let me = faas.pid();
    let orphans = || -> Vec<String> {
        faas.replica_processes()
            .into_iter()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .filter(|pid| !ancestors(*pid).contains(&me))
            .map(|pid| format!("{pid} ({}), ancestors {:?}", cmdline(pid), ancestors(pid)))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !orphans().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = orphans();
    assert!(
        left.is_empty(),
        "{what}: not the new faas's ({me}; the killed one was {killed}): {left:#?}"
    );
}

fn assert_no_temporaries(dir: &Path, what: &str) {
    for ent in std::fs::read_dir(dir).unwrap().flatten() {
        let p = ent.path();
        assert!(
            p.extension().is_none_or(|x| x != "tmp"),
            "{what}: {} left behind",
            p.display()
        );
        if p.is_dir() {
            assert_no_temporaries(&p, what);
        }
    }
}

/// The parent chain of `pid` (empty when it is gone).
fn ancestors(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut p = pid;
    while p > 1 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            break;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.push(ppid);
        p = ppid;
    }
    out
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_function_activates_while_its_update_runs_uv() {
    let faas = Faas::start().await;
    let tool_py = script("tests/functions/tool.py");
    faas.deploy_ok("f", "tests/functions/tool.py", "VERSION=\"one\"\n", 1)
        .await;
    let (s, r) = faas
        .admin(
            "POST",
            "/admin/functions/f/scale",
            Some(json!({"replicas": 0})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        faas.wait_status("f", "ready_replicas", Duration::from_secs(20), |v| v == 0)
            .await
    );
    // The new version depends on a package whose build takes 3 s (an in-tree PEP 517 backend
    // that sleeps; no index).
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("slowpkg");
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(
        pkg.join("pyproject.toml"),
        "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n\
         [project]\nname = \"slowpkg\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("backend.py"),
        script("tests/functions/slow_backend.py"),
    )
    .unwrap();
    let slow = tool_py.replace(
        "# dependencies = []",
        &format!("# dependencies = [\"slowpkg @ file://{}\"]", pkg.display()),
    );
    assert_ne!(slow, tool_py);
    let body = json!({
        "script": harness::b64_wrapped(&slow),
        "dot_file": harness::b64_wrapped("VERSION=\"two\"\n"),
    });
    let started = Instant::now();
    let update = faas.admin("PUT", "/admin/functions/f", Some(body));
    let call = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let answer = faas.call("/gateway/f/version").await;
        (answer, started.elapsed())
    };
    let ((s, r), (answer, answered_at)) = tokio::join!(update, call);
    let updated_at = started.elapsed();
    assert_eq!(s, 200, "{r}\n{}", faas.log_text());
    // Activated and answered by the old version while uv was building the new one.
    assert_eq!(answer, (200, "one".to_string()));
    assert!(
        answered_at + Duration::from_secs(1) < updated_at,
        "answered at {answered_at:?}, the update ended at {updated_at:?}"
    );
    assert_eq!(
        faas.call("/gateway/f/version").await,
        (200, "two".to_string())
    );
}
