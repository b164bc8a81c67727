//! The `faas` command line against the real server, as a user types it: `new`, `deploy`, `ls`,
//! `get`, `invoke`, `logs` (and `-f`), `scale`, `rm`, `completions`; what it prints and its
//! exit status, including a gateway that is down, a wrong token, a bad PEP 723 block caught
//! before upload, and a deploy whose dependencies take seconds, shown as they install.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::{free_port, Faas};
use serde_json::Value;

/// `faas ARGS` run in `dir` against `gateway`, with `env` on top of a clean environment.
fn cli(dir: &Path, gateway: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faas"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FAAS_") || k == "XDG_STATE_HOME" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir)
        .env("FAAS_GATEWAY", gateway)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// The CLI as the test user: the server's token from its state directory, as on one machine.
fn user(faas: &Faas, dir: &Path) -> Command {
    let state = faas.state.to_string_lossy().into_owned();
    cli(dir, &faas.url(""), &[("FAAS_STATE_DIR", &state)])
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("running faas")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and asserts success; (stdout, stderr).
fn ok(cmd: Command, args: &[&str]) -> (String, String) {
    let out = run(cmd, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "faas {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Runs and asserts exit status 1 with nothing on stdout; its stderr.
fn fails(cmd: Command, args: &[&str]) -> String {
    let out = run(cmd, args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "faas {args:?}: {stderr}");
    assert_eq!(
        text(&out.stdout),
        "",
        "faas {args:?}: stdout must stay empty"
    );
    stderr
}

/// Lines of a child's stdout (or stderr) as they come, each with when it came.
fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; the lines seen before it.
fn wait_line(rx: &mpsc::Receiver<(Instant, String)>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Ok((_, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
    panic!("no line with {needle:?} within 30 s; saw {seen:?}");
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("faas did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_new_user_goes_from_new_to_rm() {
    let faas = Faas::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let (_, err) = ok(user(&faas, d), &["new", "hello"]);
    assert!(err.contains("faas deploy hello.py"), "{err}");
    let script = std::fs::read_to_string(d.join("hello.py")).unwrap();
    assert!(script.contains("# /// script") && script.contains("/health"));
    assert!(fails(user(&faas, d), &["new", "hello"]).contains("exists"));

    // Deploy: progress on stderr, the URL alone on stdout.
    let (out, err) = ok(user(&faas, d), &["deploy", "hello.py"]);
    let url = faas.url("/gateway/hello");
    assert_eq!(out.trim(), url);
    assert!(err.contains("uv: Resolved"), "uv's progress: {err}");
    assert!(err.contains("deployed hello"), "{err}");

    let (out, _) = ok(user(&faas, d), &["ls"]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in ["NAME", "READY", "IN FLIGHT", "LAST ACTIVITY", "URL"] {
        assert!(header.contains(col), "{header}");
    }
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "hello");
    assert_eq!(row[1], "1/1");
    assert_eq!(row.last(), Some(&url.as_str()));
    let (out, _) = ok(user(&faas, d), &["ls", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON alone");
    assert_eq!(v["functions"][0]["name"], "hello");
    // --gateway before the subcommand as after it.
    let (out, _) = ok(user(&faas, d), &["--json", "get", "hello"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["ready_replicas"].as_u64(), v["url"].as_str()),
        (Some(1), Some(url.as_str()))
    );
    let (out, _) = ok(user(&faas, d), &["get", "hello"]);
    assert!(out.contains("1 ready of 1 wanted"), "{out}");

    // Follow the logs while calling it: the call's line shows up.
    let mut follow = user(&faas, d)
        .args(["logs", "hello", "-f", "--tail", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let followed = lines_of(follow.stdout.take().unwrap());

    let (out, _) = ok(
        user(&faas, d),
        &["invoke", "hello", "/any/path?x=1", "-d", "a body"],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str()),
        (Some("POST"), Some("/any/path"))
    );
    assert_eq!(
        (v["query"].as_str(), v["body"].as_str()),
        (Some("x=1"), Some("a body"))
    );
    wait_line(&followed, "POST /any/path?x=1 -> 200");
    std::fs::write(d.join("body.txt"), "from a file").unwrap();
    let (out, err) = ok(
        user(&faas, d),
        &[
            "invoke",
            "hello",
            "put/here",
            "-X",
            "put",
            "-d",
            "@body.txt",
            "-H",
            "X-Test: 1",
            "-v",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["method"].as_str(), v["body"].as_str()),
        (Some("PUT"), Some("from a file"))
    );
    assert!(err.contains("200 OK") && err.contains(" ms"), "-v: {err}");
    wait_line(&followed, "PUT /put/here -> 200");

    let (out, _) = ok(user(&faas, d), &["logs", "hello", "--tail", "50"]);
    assert!(out.contains("POST /any/path?x=1 -> 200"), "{out}");
    assert!(out.contains("listening on port"), "{out}");

    let (_, err) = ok(user(&faas, d), &["scale", "hello", "2"]);
    assert!(err.contains("2 replica(s) wanted"), "{err}");
    assert_eq!(faas.status("hello", "replicas").await, 2);
    let err = fails(user(&faas, d), &["scale", "hello", "11"]);
    assert!(
        err.contains("max_replicas") && err.contains("HTTP 400"),
        "{err}"
    );

    // Deploying the same name updates it, unless --create-only.
    std::fs::write(
        d.join("hello.py"),
        script.replace("\"function\"", "\"updated\""),
    )
    .unwrap();
    let err = fails(user(&faas, d), &["deploy", "hello.py", "--create-only"]);
    assert!(
        err.contains("already exists") && err.contains("HTTP 409"),
        "{err}"
    );
    let (out, err) = ok(user(&faas, d), &["deploy", "hello.py", "--replicas", "1"]);
    assert_eq!(out.trim(), url);
    assert!(err.contains("updated hello"), "{err}");
    let (out, _) = ok(user(&faas, d), &["invoke", "hello"]);
    assert!(out.contains("\"updated\": \"hello\""), "{out}");

    // rm asks nothing without a terminal; the follower ends with the function.
    let (_, err) = ok(user(&faas, d), &["rm", "hello"]);
    assert!(err.contains("removed hello"), "{err}");
    assert!(wait_exit(&mut follow).success());
    let (out, err) = ok(user(&faas, d), &["ls"]);
    assert_eq!(out, "");
    assert!(err.contains("no functions"), "{err}");
    let err = fails(user(&faas, d), &["get", "hello"]);
    assert!(
        err.contains("not found") && err.contains("HTTP 404"),
        "{err}"
    );
    // invoke prints the answer whatever its status, and fails on 4xx/5xx.
    let out = run(user(&faas, d), &["invoke", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no function named"));
    assert!(text(&out.stderr).contains("404"));
}

#[tokio::test]
async fn failures_say_what_is_wrong_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("bad.py"),
        "# /// script\n# dependencies = [\"\"]\n# ///\nprint('x')\n",
    )
    .unwrap();

    // Nobody listens on this port.
    let down = format!("http://127.0.0.1:{}", free_port());
    let no_gateway = |args: &[&str]| {
        let err = fails(cli(d, &down, &[("FAAS_ADMIN_TOKEN", "t")]), args);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("no gateway answers at") && err.contains(&down),
            "{err}"
        );
    };
    no_gateway(&["ls"]);
    no_gateway(&["ls", "--json"]);
    no_gateway(&["invoke", "hello"]);
    let ok_script = "# /// script\n# dependencies = []\n# ///\n";
    std::fs::write(d.join("fine.py"), ok_script).unwrap();
    no_gateway(&["deploy", "fine.py"]);

    // A bad block fails before any upload: the gateway being down does not matter.
    let err = fails(cli(d, &down, &[]), &["deploy", "bad.py"]);
    assert!(
        err.contains("bad.py") && err.contains("dependencies"),
        "{err}"
    );
    assert!(!err.contains("gateway"), "{err}");
    let err = fails(cli(d, &down, &[]), &["deploy", "missing.py"]);
    assert!(err.contains("cannot read missing.py"), "{err}");
    let err = fails(
        cli(d, &down, &[]),
        &["deploy", "fine.py", "--name", "Bad_Name"],
    );
    assert!(err.contains("invalid function name"), "{err}");

    // A wrong token: the server's message, and where the token came from.
    let faas = Faas::start().await;
    let err = fails(
        cli(d, &faas.url(""), &[("FAAS_ADMIN_TOKEN", "wrong")]),
        &["ls"],
    );
    assert!(
        err.contains("the admin token is wrong") && err.contains("HTTP 401"),
        "{err}"
    );
    assert!(err.contains("FAAS_ADMIN_TOKEN"), "{err}");
    // No token at all (another state directory): says how to get one.
    let other = tempfile::tempdir().unwrap();
    let state = other.path().to_string_lossy().into_owned();
    let err = fails(
        cli(d, &faas.url(""), &[("FAAS_STATE_DIR", &state)]),
        &["ls"],
    );
    assert!(
        err.contains("HTTP 401") && err.contains("FAAS_ADMIN_TOKEN"),
        "{err}"
    );
    // The right token by variable works as well as the state directory's.
    let token = faas.token.clone().unwrap();
    ok(
        cli(d, &faas.url(""), &[("FAAS_ADMIN_TOKEN", &token)]),
        &["ls"],
    );

    // Usage errors are clap's (exit status 2); completions print a script.
    let out = run(user(&faas, d), &["scale", "hello", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let (out, _) = ok(user(&faas, d), &["completions", "bash"]);
    assert!(out.contains("faas") && out.contains("deploy"), "{out}");
}

#[tokio::test]
async fn deploy_shows_progress_as_dependencies_install() {
    let faas = Faas::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A dependency whose build takes 3 s (an in-tree PEP 517 backend that sleeps; no index).
    let pkg = d.join("slowpkg");
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(pkg.join("pyproject.toml"), SLOW_PYPROJECT).unwrap();
    std::fs::write(
        pkg.join("backend.py"),
        harness::script("tests/functions/slow_backend.py"),
    )
    .unwrap();
    let template = harness::script("proxy/src/cli/templates/stdlib.py");
    let dependency = format!("# dependencies = [\"slowpkg @ file://{}\"]", pkg.display());
    let script = template
        .replace("# dependencies = []", &dependency)
        .replace("NAME", "slow");
    std::fs::write(d.join("slow.py"), script).unwrap();

    let started = Instant::now();
    let mut child = user(&faas, d)
        .args(["deploy", "slow.py"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = lines_of(child.stderr.take().unwrap());
    let stdout = lines_of(child.stdout.take().unwrap());
    let before = wait_line(&progress, "Building slowpkg");
    let building_at = Instant::now();
    assert!(
        before.iter().any(|l| l.contains("uv: Resolved 1 package")),
        "{before:?}"
    );
    let after = wait_line(&progress, "Built slowpkg");
    let built_at = Instant::now();
    assert!(wait_exit(&mut child).success(), "{after:?}");
    let done_at = Instant::now();
    // The lines came as uv printed them: building was shown seconds before the deploy ended.
    assert!(
        built_at - building_at >= Duration::from_secs(2),
        "Building and Built {:?} apart",
        built_at - building_at
    );
    assert!(done_at - building_at >= Duration::from_secs(2));
    let (_, url) = stdout.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(url, faas.url("/gateway/slow"));
    eprintln!(
        "deploy took {:.1} s; progress lines: {:?}",
        started.elapsed().as_secs_f64(),
        [before, after].concat()
    );
    assert_eq!(
        faas.status("slow", "dependencies").await[0]
            .as_str()
            .map(|s| s.starts_with("slowpkg")),
        Some(true)
    );
}

const SLOW_PYPROJECT: &str = r#"[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "slowpkg"
version = "0.1.0"
"#;

#[test]
fn serve_stops_at_a_misspelt_setting_and_ignores_the_clients_variables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state").to_string_lossy().into_owned();
    let serve = |env: &[(&str, &str)], conf: Option<&str>| {
        let mut cmd = cli(d, "http://127.0.0.1:1", &[("PORT", "0")]);
        cmd.env("FAAS_STATE_DIR", &state)
            .envs(env.iter().copied())
            .arg("serve");
        if let Some(c) = conf {
            std::fs::write(d.join("faas.yaml"), c).unwrap();
            cmd.args(["--conf", "faas.yaml"]);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = serve(&[("FAAS_ACTIVATION_TIMEUOT", "5s")], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("FAAS_ACTIVATION_TIMEUOT")
            && err.contains("did you mean FAAS_ACTIVATION_TIMEOUT"),
        "{err}"
    );
    let (code, err) = serve(&[], Some("faas:\n  reaper_time_to_liv: 10m\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("reaper_time_to_liv") && err.contains("reaper_time_to_live"),
        "{err}"
    );
    // FAAS_GATEWAY (set by cli()) is the command line's: serve gets as far as its port.
    let (code, err) = serve(&[("PORT", "http")], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("PORT") && !err.contains("FAAS_GATEWAY"),
        "{err}"
    );
}
