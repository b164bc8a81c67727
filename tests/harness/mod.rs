//! The end-to-end harness: starts the real `faas` binary with a temporary state directory and a
//! free port, and talks HTTP to it like a user would.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A running `faas serve`.
pub struct Faas {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its state directory (kept across restarts of the same `Faas`).
    pub state: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// A client for it.
    pub http: reqwest::Client,
    /// The admin token: the test's `FAAS_ADMIN_TOKEN`, else the one `faas` generated into its
    /// state directory; `None` with `FAAS_ADMIN_OPEN=true`.
    pub token: Option<String>,
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `uv` the tests use: the project's `.venv/bin/uv` when the dev script installed it.
pub fn uv() -> String {
    let local = repo().join(".venv/bin/uv");
    if local.exists() {
        local.to_string_lossy().into_owned()
    } else {
        "uv".into()
    }
}

/// A function script from `tests/functions/` or `examples/`.
pub fn script(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Standard base64 wrapped at 76 columns, as `base64 FILE` prints it.
pub fn b64_wrapped(text: &str) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(text);
    flat.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lets this process open as many sockets as its hard limit allows (a burst of a thousand
/// concurrent clients needs more than the usual soft limit of 1024).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Faas {
    /// Starts `faas` with a new state directory.
    pub async fn start() -> Faas {
        Self::start_with(&[]).await
    }

    /// Starts `faas` with extra environment variables.
    pub async fn start_with(env: &[(&str, &str)]) -> Faas {
        Self::start_in(tempfile::tempdir().unwrap(), env).await
    }

    /// Starts `faas` whose state directory is `<tmp>/state` (which may be filled already).
    pub async fn start_in(tmp: tempfile::TempDir, env: &[(&str, &str)]) -> Faas {
        let mut f = Faas {
            child: None,
            port: free_port(),
            state: tmp.path().join("state"),
            log: tmp.path().join("faas.log"),
            _tmp: Some(tmp),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            token: None,
        };
        f.spawn().await;
        f
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_faas"));
        // The configuration that ships (Pingora threads, keepalive pool), as a user runs it.
        cmd.arg("serve")
            .arg("--conf")
            .arg(repo().join("conf/faas.yaml"));
        // The rest of the environment (certificates, uv's cache) passes through; our own
        // settings come only from the test.
        for (k, _) in std::env::vars() {
            let ours = ["FAAS_", "REAPER_", "GATEWAY_", "K8S_"];
            if ours.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(k);
            }
        }
        cmd.env("PORT", self.port.to_string())
            .env("FAAS_LISTEN", "127.0.0.1")
            .env("FAAS_RUNTIME", "local")
            .env("FAAS_STATE_DIR", &self.state)
            .env("FAAS_UV", uv())
            // bubblewrap as `./dev run` finds it: on PATH (.venv/bin first).
            .env("PATH", tools_path())
            .env("LOG_LEVEL", "info")
            // Tests poll the admin API; the original's 10 per minute is tested on its own.
            .env("FAAS_ADMIN_RATE_LIMIT", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("starting faas"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(self.url("/health")).send().await {
                if r.status() == 200 {
                    self.token = self.find_token();
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "faas did not answer /health; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn find_token(&self) -> Option<String> {
        let given = |k: &str| {
            self.env
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(t) = given("FAAS_ADMIN_TOKEN").filter(|t| !t.is_empty()) {
            return Some(t);
        }
        if given("FAAS_ADMIN_OPEN").as_deref() == Some("true") {
            return None;
        }
        let file = self.state.join("admin-token");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("faas wrote no {}: {e}", file.display()));
        Some(text.trim().to_string())
    }

    /// A request on the gateway port; `/admin` paths carry the admin token.
    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method.parse().unwrap(), self.url(path));
        match &self.token {
            Some(t) if path.starts_with("/admin") => req.bearer_auth(t),
            _ => req,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What `faas` printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `POST /admin/python` with the original's body shape.
    pub async fn deploy(
        &self,
        name: &str,
        script: &str,
        dot_file: &str,
        replica: u32,
    ) -> (u16, Value) {
        let body = json!({
            "script": b64_wrapped(script),
            "dot_file": b64_wrapped(dot_file),
            "option": {"user": "frank", "replica": replica, "name": name},
        });
        self.admin("POST", "/admin/python", Some(body)).await
    }

    /// Deploys `tests/…` or `examples/…` script `path` and asserts that the deploy succeeded.
    pub async fn deploy_ok(&self, name: &str, path: &str, dot_file: &str, replica: u32) {
        let (status, reply) = self.deploy(name, &script(path), dot_file, replica).await;
        assert_eq!(
            status,
            200,
            "deploying {name}: {reply}\n{}",
            self.log_text()
        );
    }

    /// An admin call answering JSON (status, body; `Value::Null` for an empty body).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// GET through the gateway; (status, body text).
    pub async fn call(&self, path: &str) -> (u16, String) {
        let resp = self.get(path).await;
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// `GET path` on the gateway port: the response, whatever its status.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request("GET", path)
            .send()
            .await
            .expect("gateway request")
    }

    /// Its resident memory now, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The process id of `faas`.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let start = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = start + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return start.elapsed();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("faas did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts `faas` again on the same port and state directory.
    pub async fn restart(&mut self) {
        self.terminate();
        self.spawn().await;
    }

    /// Processes whose command line mentions this instance's state directory (the replicas).
    pub fn replica_processes(&self) -> Vec<i32> {
        processes_mentioning(&self.state.to_string_lossy())
    }
}

impl Drop for Faas {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// Live processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if cmd.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

impl Faas {
    /// The value of one series from `/metrics` (`name{labels}` exactly as exposed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.call("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// One field of `GET /admin/functions/{name}`.
    pub async fn status(&self, name: &str, field: &str) -> serde_json::Value {
        let (s, v) = self
            .admin("GET", &format!("/admin/functions/{name}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v[field].clone()
    }

    /// Polls a field of the function's status until `pred` holds or `timeout` passes.
    pub async fn wait_status(
        &self,
        name: &str,
        field: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.status(name, field).await) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `PATH` with the project's `.venv/bin` first, as `./dev` sets it.
pub fn tools_path() -> std::ffi::OsString {
    let mut dirs = vec![repo().join(".venv/bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// A tool installed by `./dev setup` into `.venv/bin` (or found on `PATH`).
pub fn tool(name: &str) -> PathBuf {
    let local = repo().join(".venv/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// Runs a tool and returns its stdout; panics with its output when it fails.
pub fn run_tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {name} (install it with ./dev setup): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `helm template` of the chart, as YAML documents.
pub fn render_chart(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let mut args = vec![
        "template",
        "faas",
        "charts/poorman-faas",
        "--namespace",
        "faas",
    ];
    args.extend_from_slice(extra);
    let text = run_tool("helm", &args);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}
