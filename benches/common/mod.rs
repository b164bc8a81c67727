//! What the benchmarks share: the repository, a running `faas`, the machine, the results file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `uv` installed by `./dev setup`, or the one on `PATH`.
pub fn uv() -> String {
    let local = repo().join(".venv/bin/uv");
    if local.exists() {
        local.to_string_lossy().into_owned()
    } else {
        "uv".into()
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A number from the environment, or a default.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `VmHWM:`) in KiB.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A release `faas` with the local runtime on a free port.
pub struct Faas {
    /// The process.
    pub child: Child,
    /// Its port.
    pub port: u16,
    /// A client for it.
    pub http: reqwest::Client,
    /// Its state directory.
    pub state: tempfile::TempDir,
}

impl Faas {
    /// Starts `faas` with extra environment, and waits for `/health`.
    pub async fn start(env: &[(&str, &str)]) -> Faas {
        let state = tempfile::tempdir().unwrap();
        Self::start_in(state, env).await
    }

    /// Starts `faas` on an existing state directory.
    pub async fn start_in(state: tempfile::TempDir, env: &[(&str, &str)]) -> Faas {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_faas"))
            .arg("serve")
            .arg("--conf")
            .arg(repo().join("conf/faas.yaml"))
            .env("PORT", port.to_string())
            .env("FAAS_LISTEN", "127.0.0.1")
            .env("FAAS_RUNTIME", "local")
            .env("FAAS_STATE_DIR", state.path())
            .env("FAAS_UV", uv())
            .env("LOG_LEVEL", "warn")
            .env("REAPER_TIME_TO_LIVE", "1h")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting faas");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let f = Faas {
            child,
            port,
            http,
            state,
        };
        for _ in 0..1200 {
            if f.http.get(f.url("/health")).send().await.is_ok() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("faas did not start");
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Deploys a script (and dot file) under `name`.
    pub async fn deploy(&self, name: &str, script: &Path, dot_file: &str, replica: u32) {
        let text = std::fs::read_to_string(script).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = json!({
            "script": b64(&text),
            "dot_file": b64(dot_file),
            "option": {"name": name, "replica": replica},
        });
        let r = self
            .http
            .post(self.url("/admin/python"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// `GET /admin/functions/{name}`.
    pub async fn status(&self, name: &str) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/admin/functions/{name}")))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// One series of `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Its resident memory now, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for Faas {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// CPU model, cores, memory and the date.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    let date = Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.0} GiB RAM, measured {date}",
        mem as f64 / 1048576.0
    )
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in benches/README.md.
pub fn write_section(name: &str, body: &str) {
    let path = repo().join("benches/README.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{body}{}", &text[..b], &text[e..]),
        _ => format!("{text}\n{begin}\n{body}{end}\n"),
    };
    match std::fs::write(&path, new) {
        Ok(()) => eprintln!("== updated {}", path.display()),
        Err(e) => eprintln!("could not update {}: {e}", path.display()),
    }
}

/// "met" or "NOT met".
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
