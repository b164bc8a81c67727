//! Load benchmark (`just bench`): requests/s, p50, p99, errors and peak RSS of our gateway
//! against nginx and haproxy as reverse proxies, all in front of the same fast upstream (an nginx
//! returning a fixed small response), measured with `wrk` in one run, in rounds that alternate
//! the targets (medians reported). Prints a table with the ratios gateway/nginx and writes it into `benches/README.md`. Also reports the RSS of `faas`
//! idle and with 10 000 functions registered.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{env_num, free_port, machine, repo, rss_kib, verdict, write_section, Faas};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// `faas` for measuring: no per-request logging, nothing reaped meanwhile.
const QUIET: &[(&str, &str)] = &[("LOG_LEVEL", "warn"), ("REAPER_TIME_TO_LIVE", "1h")];

/// One wrk run against one target.
#[derive(Debug, Clone, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    peak_rss_kib: u64,
}

/// A proxy process under test.
struct Proc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers too.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn which(bin: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("{bin} is not installed: run `./dev bench-setup` (apt-get install nginx haproxy wrk)");
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx as a reverse proxy with upstream keepalive, `worker_processes auto`.
fn start_nginx_proxy(port: u16, upstream: u16) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes auto;\npid {d}/nginx.pid;\nerror_log stderr error;\ndaemon off;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
           client_body_temp_path {d}/cb; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           upstream fn {{ server 127.0.0.1:{upstream}; keepalive 512; }}\n\
           server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
             location / {{ proxy_pass http://fn; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(which("nginx"))
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-p")
        .arg(dir.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Proc { child, _dir: dir }
}

/// A bare Pingora proxy (only `upstream_peer`, the shipped thread and pool settings): the floor
/// under our gateway, to split Pingora's cost from ours.
struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Runs the bare Pingora proxy on a thread of this process.
fn start_bare_pingora(port: u16, upstream: u16) {
    std::thread::spawn(move || {
        let conf =
            ServerConf::from_yaml(&std::fs::read_to_string(repo().join("conf/faas.yaml")).unwrap())
                .unwrap();
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let bare = Bare {
            upstream: ([127, 0, 0, 1], upstream).into(),
        };
        let mut svc = pingora_proxy::http_proxy_service(&server.configuration, bare);
        svc.add_tcp(&format!("127.0.0.1:{port}"));
        server.add_service(svc);
        server.run(RunArgs::default());
    });
    wait_port(port);
}

/// haproxy with connection reuse to the upstream, one thread per core.
fn start_haproxy(port: u16, upstream: u16) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let conf = format!(
        "global\n  nbthread {threads}\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
         backend b\n  http-reuse always\n  server s1 127.0.0.1:{upstream} maxconn 2000\n"
    );
    std::fs::write(dir.path().join("haproxy.cfg"), conf).unwrap();
    let child = Command::new(which("haproxy"))
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .arg("-db")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Proc { child, _dir: dir }
}

/// Resident memory of a process and its children (nginx workers), KiB.
fn tree_rss(pid: u32) -> u64 {
    let mut total = rss_kib(pid, "VmRSS:");
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            total += rss_kib(c, "VmRSS:");
        }
    }
    total
}

fn parse_ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => n,
    }
}

/// Runs wrk; samples the RSS of `pid` (if any) meanwhile.
fn wrk(url: &str, connections: usize, seconds: usize, pid: Option<u32>) -> Run {
    let mut child = Command::new(which("wrk"))
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(p) = pid {
            peak = peak.max(tree_rss(p));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut run = Run {
        peak_rss_kib: peak,
        ..Run::default()
    };
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50_ms = parse_ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_ms = parse_ms(v);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            run.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    run
}

/// The median of each measure over the rounds (errors: their sum; RSS: the peak).
fn median_run(runs: &[Run]) -> Run {
    let median = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Run {
        rps: median(|r| r.rps),
        p50_ms: median(|r| r.p50_ms),
        p99_ms: median(|r| r.p99_ms),
        errors: runs.iter().map(|r| r.errors).sum(),
        peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
    }
}

/// The lowest and highest requests/s of the rounds.
fn range(runs: &[Run]) -> (f64, f64) {
    let lo = runs.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min);
    let hi = runs.iter().map(|r| r.rps).fold(0.0, f64::max);
    (lo, hi)
}

/// Writes `n` functions (at zero replicas) into a state directory, as the local runtime keeps them.
fn populate(state: &Path, n: usize) {
    let script =
        "# /// script\n# requires-python = \">=3.11\"\n# dependencies = []\n# ///\nprint('hi')\n";
    // One prepared environment, recorded for every function as a deploy records it (so that
    // restoring them measures the registry, not ten thousand `uv sync`s).
    let sample = state.join("sample.py");
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(&sample, script).unwrap();
    let uv = |args: &[&str]| {
        let out = Command::new(common::uv())
            .args(args)
            .arg(&sample)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "uv {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    uv(&["sync", "--script"]);
    let python = uv(&["python", "find", "--script"]);
    let venv = Path::new(&python).parent().and_then(Path::parent).unwrap();
    let env =
        serde_json::json!({"python": python, "venv": venv, "base_prefix": null, "uv_cache": null});
    for i in 0..n {
        let name = format!("fn-{i:05}");
        let dir = state.join("functions").join(&name);
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::write(dir.join("v1/main.py"), script).unwrap();
        std::fs::write(dir.join("v1/.env"), "").unwrap();
        std::fs::write(dir.join("v1/python.json"), env.to_string()).unwrap();
        let spec = serde_json::json!({
            "name": name, "user": null, "replicas": 0, "min_replicas": 0, "max_replicas": 10,
            "target_concurrency": null, "max_concurrency": null, "idle_timeout_ms": null,
            "metadata": {"requires_python": ">=3.11", "dependencies": []},
            "version": 1, "created_at_ms": 0, "updated_at_ms": 0,
        });
        std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    }
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 5);
    let rounds = env_num("BENCH_ROUNDS", 3).max(1);
    let concurrencies: Vec<usize> = std::env::var("BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "16,64,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();

    // The upstream is itself a function of the gateway: nginx on a port we choose.
    let upstream = free_port();
    let faas = Faas::start_with(QUIET).await;
    let dot = format!("UPSTREAM_PORT={upstream}\nNGINX_BIN={}\n", which("nginx"));
    let script =
        std::fs::read_to_string(repo().join("benches/functions/nginx_upstream.py")).unwrap();
    let (status, reply) = faas.deploy("upstream", &script, &dot, 1).await;
    assert_eq!(status, 200, "deploying the upstream: {reply}");
    wait_port(upstream);
    let (nginx_port, haproxy_port) = (free_port(), free_port());
    let nginx = start_nginx_proxy(nginx_port, upstream);
    let haproxy = start_haproxy(haproxy_port, upstream);
    let bare_port = free_port();
    start_bare_pingora(bare_port, upstream);

    let targets: [(&str, String, Option<u32>); 5] = [
        (
            "upstream direct",
            format!("http://127.0.0.1:{upstream}/"),
            None,
        ),
        (
            "nginx",
            format!("http://127.0.0.1:{nginx_port}/"),
            Some(nginx.child.id()),
        ),
        (
            "haproxy",
            format!("http://127.0.0.1:{haproxy_port}/"),
            Some(haproxy.child.id()),
        ),
        (
            "bare Pingora 0.9",
            format!("http://127.0.0.1:{bare_port}/"),
            None,
        ),
        (
            "faas gateway",
            faas.url("/gateway/upstream/"),
            Some(faas.pid() as u32),
        ),
    ];
    // Rounds alternate the targets, so that each target sees the machine's momentary load as
    // often as the others; the table reports the median of the rounds.
    let mut runs: Vec<(usize, &str, Vec<Run>)> = Vec::new();
    for &c in &concurrencies {
        for round in 1..=rounds {
            for (name, url, pid) in &targets {
                eprintln!("== round {round}/{rounds}, {name}: {c} connections, {seconds} s");
                wrk(url, c, if round == 1 { 2 } else { 1 }, None);
                let run = wrk(url, c, seconds, *pid);
                eprintln!(
                    "   {:>10.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}  peak RSS {:.1} MiB",
                    run.rps,
                    run.p50_ms,
                    run.p99_ms,
                    run.errors,
                    run.peak_rss_kib as f64 / 1024.0
                );
                match runs.iter_mut().find(|(cc, n, _)| *cc == c && n == name) {
                    Some((_, _, v)) => v.push(run),
                    None => runs.push((c, name, vec![run])),
                }
            }
        }
    }
    let rows: Vec<(usize, &str, Run, (f64, f64))> = runs
        .iter()
        .map(|(c, name, v)| (*c, *name, median_run(v), range(v)))
        .collect();
    drop((nginx, haproxy));
    drop(faas);

    eprintln!("== faas memory: idle, and with 10 000 functions registered");
    let idle = Faas::start_with(QUIET).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = idle.rss_kib();
    drop(idle);
    let tmp = tempfile::tempdir().unwrap();
    populate(&tmp.path().join("state"), 10_000);
    let many = Faas::start_in(tmp, QUIET).await;
    // The admin API answers once the stored functions are back (the last one proves it); the
    // full list is not fetched, so that its 5 MB of JSON does not count as the registry's memory.
    let first = many.admin("GET", "/admin/functions/fn-00000", None).await.0;
    let last = many.admin("GET", "/admin/functions/fn-09999", None).await.0;
    assert_eq!(
        (first, last),
        (200, 200),
        "the 10 000 functions were not restored"
    );
    let registered = 10_000;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let many_rss = many.rss_kib();
    drop(many);

    let mut table = format!(
        "Machine: {}\n\nwrk -t1, {rounds} rounds of {seconds} s per target and concurrency, the targets alternating within each round \
         (after a warm-up); medians of the rounds, the range of requests/s in brackets. Every proxy is in front of the \
         same nginx upstream.\n\n\
         | connections | target | requests/s | p50 | p99 | errors | peak RSS |\n|---:|---|---:|---:|---:|---:|---:|\n",
        machine()
    );
    for (c, name, r, (lo, hi)) in &rows {
        let rss = if r.peak_rss_kib > 0 {
            format!("{:.1} MiB", r.peak_rss_kib as f64 / 1024.0)
        } else {
            "–".into()
        };
        table.push_str(&format!(
            "| {c} | {name} | {:.0} ({lo:.0}–{hi:.0}) | {:.2} ms | {:.2} ms | {} | {rss} |\n",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        ));
    }
    table.push_str("\n| connections | throughput gateway/nginx | p99 gateway/nginx | gateway/haproxy throughput | gateway/bare Pingora throughput |\n|---:|---:|---:|---:|---:|\n");
    let mut verdicts = Vec::new();
    for &c in &concurrencies {
        let get = |n: &str| {
            rows.iter()
                .find(|(cc, name, _, _)| *cc == c && *name == n)
                .map(|r| r.2.clone())
                .unwrap_or_default()
        };
        let (g, n, h) = (get("faas gateway"), get("nginx"), get("haproxy"));
        let b = get("bare Pingora 0.9");
        table.push_str(&format!(
            "| {c} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            g.rps / n.rps.max(1.0),
            g.p99_ms / n.p99_ms.max(0.001),
            g.rps / h.rps.max(1.0),
            g.rps / b.rps.max(1.0)
        ));
        verdicts.push(format!(
            "{c} connections: throughput >= 1.0 x nginx {}, p99 <= nginx {}, 0 errors {}",
            verdict(g.rps >= n.rps),
            verdict(g.p99_ms <= n.p99_ms),
            verdict(g.errors == 0)
        ));
    }
    table.push_str(&format!(
        "\n| `faas` RSS | measured | target |\n|---|---:|---:|\n| idle | {:.1} MiB | ≤ 30 MiB |\n| {registered} functions registered | {:.1} MiB | ≤ 60 MiB |\n",
        idle_rss as f64 / 1024.0,
        many_rss as f64 / 1024.0
    ));
    println!("\n{table}");
    for v in &verdicts {
        println!("target, {v}");
    }
    println!(
        "target, RSS idle <= 30 MiB {}, with 10 000 functions <= 60 MiB {}",
        verdict(idle_rss <= 30 * 1024),
        verdict(many_rss <= 60 * 1024 && registered == 10_000)
    );
    write_section("load", &table);
}
