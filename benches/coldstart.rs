//! Cold-start benchmark (`just bench-coldstart`). Prints a table and writes it into
//! `benches/README.md`.
//!
//! 1. Cold start from zero of `examples/hello` (stdlib) and `examples/echo` (FastAPI), three
//!    ways interleaved in each round: started directly with `uv run --script` until it first
//!    answers (the reference), through the gateway forked from the function's zygote (the
//!    default), and through the gateway with `FAAS_ZYGOTE=false`; and the cost of the sandbox
//!    (`FAAS_SANDBOX=false` in the same rounds, and bare `bwrap … true` against `true`).
//! 2. Memory of each warm zygote, and of one replica after 200 requests, forked and started
//!    directly.
//! 3. A burst of concurrent requests at a function at zero (one that takes a second to start, so
//!    that the whole burst is held): successes, activations, and the peak memory of `faas`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{env_num, free_port, machine, repo, rss_kib, uv, verdict, write_section, Faas};
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&v, 0.5), percentile(&v, 0.95))
}

async fn scale_to_zero(faas: &Faas, name: &str) {
    let r = faas
        .request("POST", &format!("/admin/functions/{name}/scale"))
        .json(&json!({"replicas": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    while faas.status(name, "ready_replicas").await != 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the stopped process go away entirely.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Deploys the script at `path`; the benchmark needs it deployed.
pub async fn deploy(faas: &Faas, name: &str, path: &Path, dot_file: &str, replica: u32) {
    let script = std::fs::read_to_string(path).unwrap();
    let (status, reply) = faas.deploy(name, &script, dot_file, replica).await;
    assert_eq!(status, 200, "deploying {name}: {reply}");
}

/// Starts the script with `uv run --script` and polls `path` until it answers; the time it took.
async fn direct_cold_start(http: &reqwest::Client, script: &Path, path: &str) -> f64 {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}{path}");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(uv())
        .arg("run")
        .arg("--script")
        .arg(script)
        .env("PORT", port.to_string())
        .env("UV_PYTHON_DOWNLOADS", "never")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status() == 200 {
                let _ = r.bytes().await;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait().await;
    took
}

/// Times `argv` from spawn to exit, `n` times; the median in ms.
fn exec_median(argv: &[String], n: usize) -> f64 {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let ok = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "{argv:?} failed");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    percentile(&v, 0.5)
}

/// One cold start of `name` from zero through `faas`, GET `path` until the answer, in ms.
async fn gateway_cold_start(http: &reqwest::Client, faas: &Faas, name: &str, path: &str) -> f64 {
    scale_to_zero(faas, name).await;
    let started = Instant::now();
    let r = http
        .get(faas.url(&format!("/gateway/{name}{path}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    started.elapsed().as_secs_f64() * 1000.0
}

/// Waits until the function's zygote is warm; its status.
async fn zygote_warm(faas: &Faas, name: &str) -> serde_json::Value {
    for _ in 0..600 {
        let z = faas.status(name, "zygote").await;
        if z["state"] == "warm" {
            return z;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the zygote of {name} did not get warm: {}", faas.log_text());
}

/// `Rss` and `Pss` of `/proc/<pid>/smaps_rollup`, and its private pages (USS), in KiB.
fn smaps(pid: i32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let f = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        f("Rss:"),
        f("Pss:"),
        f("Private_Clean:") + f("Private_Dirty:"),
    )
}

/// The Python process serving `faas`'s only replica of function `name`: a child of its zygote
/// `zygote`, or (without one) the interpreter running its script.
fn replica_pid(faas: &Faas, name: &str, zygote: Option<i32>) -> i32 {
    let script = faas
        .state
        .join("functions")
        .join(name)
        .to_string_lossy()
        .into_owned();
    for ent in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid: i32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let python = cmd.split('\0').next().unwrap_or("").ends_with("/python");
        match zygote {
            Some(z) if ppid == z => return pid,
            None if python && cmd.contains(&script) && !cmd.contains("\0-c\0") => return pid,
            _ => {}
        }
    }
    panic!("no replica process found");
}

/// Memory (KiB: RSS, PSS, USS) of the function's one replica after 200 requests.
async fn replica_memory(
    faas: &Faas,
    name: &str,
    path: &str,
    zygote: Option<i32>,
) -> (u64, u64, u64) {
    scale_to_zero(faas, name).await;
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let r = http
            .get(faas.url(&format!("/gateway/{name}{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    smaps(replica_pid(faas, name, zygote))
}

/// Median, p95, and as a line of the table.
struct Way {
    label: String,
    times: Vec<f64>,
}

impl Way {
    fn new(label: &str) -> Self {
        Way {
            label: label.to_string(),
            times: Vec::new(),
        }
    }

    fn median(&self) -> f64 {
        stats(self.times.clone()).0
    }

    fn row(&self, reference: f64) -> String {
        let (m, p95) = stats(self.times.clone());
        format!(
            "| {} | {m:.1} ms | {p95:.1} ms | {:.2}× | {:.1}× |\n",
            self.label,
            m / reference,
            reference / m
        )
    }
}

#[tokio::main]
async fn main() {
    let iterations = env_num("BENCH_ITERATIONS", 20);
    let burst = env_num("BENCH_BURST", 1000);
    let hello = repo().join("examples/hello/main.py");
    let echo = repo().join("examples/echo/main.py");
    let quiet = [("REAPER_TIME_TO_LIVE", "1h"), ("LOG_LEVEL", "warn")];
    let faas =
        Faas::start_with(&[quiet[0], quiet[1], ("FAAS_ACTIVATION_MAX_PENDING", "5000")]).await;
    let off = Faas::start_with(&[quiet[0], quiet[1], ("FAAS_ZYGOTE", "false")]).await;
    let plain = Faas::start_with(&[
        quiet[0],
        quiet[1],
        ("FAAS_ZYGOTE", "false"),
        ("FAAS_SANDBOX", "false"),
    ])
    .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // (name, script, path that answers 200)
    let functions = [("hello", &hello, "/"), ("echo", &echo, "/health")];
    for (name, script, _) in functions {
        deploy(&faas, name, script, "", 1).await;
        deploy(&off, name, script, "", 1).await;
        zygote_warm(&faas, name).await;
    }
    deploy(&plain, "hello", &hello, "", 1).await;

    eprintln!(
        "== cold start: {iterations} rounds, each, for hello and echo: gateway from zero with the \
         zygote, gateway from zero with FAAS_ZYGOTE=false, direct `uv run`; and hello with \
         FAAS_ZYGOTE=false FAAS_SANDBOX=false"
    );
    let mut ways: Vec<[Way; 3]> = functions
        .iter()
        .map(|_| {
            [
                Way::new("direct: `uv run --script` until it first answers (the reference)"),
                Way::new("through the gateway from zero, forked from the zygote (the default)"),
                Way::new("through the gateway from zero, `FAAS_ZYGOTE=false`"),
            ]
        })
        .collect();
    let mut unsandboxed = Vec::new();
    for i in 0..iterations {
        for (f, (name, script, path)) in functions.iter().enumerate() {
            let z = gateway_cold_start(&http, &faas, name, path).await;
            let o = gateway_cold_start(&http, &off, name, path).await;
            let d = direct_cold_start(&http, script, path).await;
            ways[f][0].times.push(d);
            ways[f][1].times.push(z);
            ways[f][2].times.push(o);
            eprintln!(
                "   round {:>2}/{iterations} {name:>5}: zygote {z:>6.1} ms, no zygote {o:>6.1} ms, \
                 uv run {d:>6.1} ms",
                i + 1
            );
        }
        unsandboxed.push(gateway_cold_start(&http, &plain, "hello", "/").await);
    }
    drop(plain);
    let sandbox_paired: Vec<f64> = ways[0][2]
        .times
        .iter()
        .zip(&unsandboxed)
        .map(|(s, u)| s - u)
        .collect();
    let (s50, s95) = stats(sandbox_paired);
    let (u50, u95) = stats(unsandboxed);

    // Memory: each warm zygote; one replica of echo after 200 requests, forked and direct.
    let mut memory = String::new();
    for (name, _, path) in functions {
        let z = zygote_warm(&faas, name).await;
        let zpid = z["pid"].as_i64().unwrap() as i32;
        let (zr, zp, zu) = smaps(zpid);
        let (cr, cp, cu) = replica_memory(&faas, name, path, Some(zpid)).await;
        let (dr, dp, du) = replica_memory(&off, name, path, None).await;
        memory += &format!(
            "| `{name}`: warm zygote | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n\
             | `{name}`: forked replica after 200 requests | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n\
             | `{name}`: directly started replica after 200 requests | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            zr as f64 / 1024.0,
            zp as f64 / 1024.0,
            zu as f64 / 1024.0,
            cr as f64 / 1024.0,
            cp as f64 / 1024.0,
            cu as f64 / 1024.0,
            dr as f64 / 1024.0,
            dp as f64 / 1024.0,
            du as f64 / 1024.0,
        );
    }
    drop(off);

    // The sandbox alone: bubblewrap with the namespaces and mounts a replica gets, running
    // `true`, against `true`.
    let bwrap = common::tool("bwrap").to_string_lossy().into_owned();
    let sandboxed_true: Vec<String> = std::iter::once(bwrap.as_str())
        .chain(
            control::runtime::local::sandbox::NAMESPACE_ARGS
                .iter()
                .copied(),
        )
        .chain([
            "--ro-bind",
            "/",
            "/",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/root",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--remount-ro",
            "/root",
            "--",
            "true",
        ])
        .map(String::from)
        .collect();
    let runs = iterations.max(20) * 5;
    let true_ms = exec_median(&["true".to_string()], runs);
    let bwrap_ms = exec_median(&sandboxed_true, runs);

    eprintln!("== burst: {burst} concurrent requests at a function at zero (1 s start)");
    let slow = repo().join("benches/functions/slow_start.py");
    deploy(&faas, "burst", &slow, "", 0).await;
    let pid = faas.pid() as u32;
    let baseline = rss_kib(pid, "VmRSS:");
    let before = faas
        .metric("faas_cold_starts_total{function=\"burst\",outcome=\"ready\"}")
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..burst)
        .map(|_| {
            let (c, url) = (client.clone(), faas.url("/gateway/burst/"));
            tokio::spawn(
                async move { matches!(c.get(url).send().await, Ok(r) if r.status() == 200) },
            )
        })
        .collect();
    // Peak RSS overall, and while the burst is only held (no replica ready yet).
    let (mut peak_rss, mut held_rss, mut peak_held) = (baseline, baseline, 0u64);
    while !tasks.iter().all(|t| t.is_finished()) {
        let rss = rss_kib(pid, "VmRSS:");
        peak_rss = peak_rss.max(rss);
        let held = faas
            .metric("faas_activation_queue_depth{function=\"burst\"}")
            .await as u64;
        let ready = faas
            .metric("faas_function_replicas{function=\"burst\",state=\"ready\"}")
            .await;
        if ready == 0.0 && held > 0 {
            held_rss = held_rss.max(rss);
        }
        peak_held = peak_held.max(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burst_took = started.elapsed();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap() as usize;
    }
    let activations = faas
        .metric("faas_cold_starts_total{function=\"burst\",outcome=\"ready\"}")
        .await
        - before;
    let per_held = (held_rss.saturating_sub(baseline)) as f64 * 1024.0 / peak_held.max(1) as f64;

    let machine = machine();
    let mut cold = String::new();
    for (f, (name, _, _)) in functions.iter().enumerate() {
        let what = if *name == "hello" {
            "`examples/hello` (stdlib)"
        } else {
            "`examples/echo` (FastAPI)"
        };
        cold += &format!(
            "| cold start of {what} | median | p95 | ÷ `uv run` | `uv run` ÷ |\n|---|---:|---:|---:|---:|\n"
        );
        let reference = ways[f][0].median();
        for w in &ways[f] {
            cold += &w.row(reference);
        }
        cold += "\n";
    }
    let table = format!(
        "Machine: {machine}\n\n{cold}\
         | sandbox (`examples/hello`, without the zygote) | median | p95 |\n\
         |---|---:|---:|\n\
         | through the gateway from zero, `FAAS_ZYGOTE=false FAAS_SANDBOX=false` | {u50:.1} ms | {u95:.1} ms |\n\
         | sandbox: paired, sandboxed minus unsandboxed in the same round | {s50:.1} ms | {s95:.1} ms |\n\
         | sandbox alone: `bwrap … true` minus `true` ({runs} runs each, median) | {:.2} ms | |\n\n\
         | memory (`/proc/<pid>/smaps_rollup`) | RSS | PSS | private (USS) |\n\
         |---|---:|---:|---:|\n\
         {memory}\n\
         | burst at a function at zero (1 s start) | result |\n\
         |---|---:|\n\
         | requests | {burst} |\n\
         | succeeded | {ok} ({:.1} %) |\n\
         | activations | {activations} |\n\
         | peak requests held at once | {peak_held} |\n\
         | all answered after | {:.2} s |\n\
         | `faas` RSS before → peak while held → peak forwarding | {:.1} → {:.1} → {:.1} MiB |\n\
         | memory per held request | {:.1} KiB |\n",
        bwrap_ms - true_ms,
        ok as f64 * 100.0 / burst as f64,
        burst_took.as_secs_f64(),
        baseline as f64 / 1024.0,
        held_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        per_held / 1024.0,
    );
    println!("\n{table}");
    let (hz, ez) = (ways[0][1].median(), ways[1][1].median());
    println!(
        "targets: stdlib from zero <= 10 ms median: {}; FastAPI from zero <= 30 ms median: {}; \
         FastAPI >= 10x faster than uv run: {}; 100 % success: {}; one activation: {}; \
         <= 16 KiB per held request: {}",
        verdict(hz <= 10.0),
        verdict(ez <= 30.0),
        verdict(ways[1][0].median() / ez >= 10.0),
        verdict(ok == burst),
        verdict(activations == 1.0),
        verdict(per_held <= 16.0 * 1024.0),
    );
    write_section("coldstart", &table);
}
