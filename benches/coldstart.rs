//! Cold-start benchmark (`just bench-coldstart`). Prints a table and writes it into
//! `benches/README.md`.
//!
//! 1. Cold start from zero through the gateway (replicas sandboxed, the default, and with
//!    `FAAS_SANDBOX=false`) vs. starting the same stdlib function directly with
//!    `uv run --script` until it first answers, interleaved in the same run; and the bare cost
//!    of entering the sandbox (`bwrap … true` against `true`).
//! 2. A burst of concurrent requests at a function at zero (one that takes a second to start, so
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

/// Starts the script with `uv run --script` and polls it until it answers; the time it took.
async fn direct_cold_start(http: &reqwest::Client, script: &Path) -> f64 {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
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

/// One cold start from zero through `faas`, in ms.
async fn gateway_cold_start(http: &reqwest::Client, faas: &Faas) -> f64 {
    scale_to_zero(faas, "hello").await;
    let started = Instant::now();
    let r = http.get(faas.url("/gateway/hello/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    started.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let iterations = env_num("BENCH_ITERATIONS", 20);
    let burst = env_num("BENCH_BURST", 1000);
    let hello = repo().join("examples/hello/main.py");
    let faas = Faas::start_with(&[
        ("FAAS_ACTIVATION_MAX_PENDING", "5000"),
        ("REAPER_TIME_TO_LIVE", "1h"),
        ("LOG_LEVEL", "warn"),
    ])
    .await;
    let plain = Faas::start_with(&[
        ("FAAS_SANDBOX", "false"),
        ("REAPER_TIME_TO_LIVE", "1h"),
        ("LOG_LEVEL", "warn"),
    ])
    .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    eprintln!(
        "== cold start: {iterations} rounds, each: gateway from zero (sandboxed), gateway from \
         zero (FAAS_SANDBOX=false), direct `uv run`"
    );
    deploy(&faas, "hello", &hello, "", 1).await;
    deploy(&plain, "hello", &hello, "", 1).await;
    let (mut gateway, mut unsandboxed, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        gateway.push(gateway_cold_start(&http, &faas).await);
        unsandboxed.push(gateway_cold_start(&http, &plain).await);
        direct.push(direct_cold_start(&http, &hello).await);
        eprintln!(
            "   round {:>2}/{iterations}: gateway {:>6.1} ms, unsandboxed {:>6.1} ms, direct {:>6.1} ms",
            i + 1,
            gateway[i],
            unsandboxed[i],
            direct[i]
        );
    }
    drop(plain);
    // The rounds alternate the ways, so each pair shares the machine's momentary state: the
    // median of the paired differences is the overhead's robust estimate.
    let paired: Vec<f64> = gateway.iter().zip(&direct).map(|(g, d)| g - d).collect();
    let sandbox_paired: Vec<f64> = gateway
        .iter()
        .zip(&unsandboxed)
        .map(|(g, u)| g - u)
        .collect();
    let (o50, o95) = stats(paired);
    let (s50, s95) = stats(sandbox_paired);
    let (g50, g95) = stats(gateway);
    let (u50, u95) = stats(unsandboxed);
    let (d50, d95) = stats(direct);

    // The sandbox alone: bubblewrap with the namespaces and mounts a replica gets, running
    // `true`, against `true`.
    let bwrap = common::tool("bwrap").to_string_lossy().into_owned();
    let sandboxed_true: Vec<String> = [
        bwrap.as_str(),
        "--die-with-parent",
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
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
    ]
    .map(String::from)
    .to_vec();
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
    let table = format!(
        "Machine: {machine}\n\n\
         | cold start of `examples/hello` (stdlib) | median | p95 |\n\
         |---|---:|---:|\n\
         | direct: `uv run --script` until it first answers | {d50:.1} ms | {d95:.1} ms |\n\
         | through the gateway from zero replicas (sandboxed, the default) | {g50:.1} ms | {g95:.1} ms |\n\
         | through the gateway from zero replicas, `FAAS_SANDBOX=false` | {u50:.1} ms | {u95:.1} ms |\n\
         | sandbox: paired, sandboxed minus unsandboxed in the same round | {s50:.1} ms | {s95:.1} ms |\n\
         | sandbox alone: `bwrap … true` minus `true` ({runs} runs each, median) | {:.2} ms | |\n\
         | overhead: difference of the medians above | {:.1} ms | {:.1} ms |\n\
         | overhead: paired, gateway minus direct in the same round | {o50:.1} ms | {o95:.1} ms |\n\n\
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
        g50 - d50,
        g95 - d95,
        ok as f64 * 100.0 / burst as f64,
        burst_took.as_secs_f64(),
        baseline as f64 / 1024.0,
        held_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        per_held / 1024.0,
    );
    println!("\n{table}");
    println!(
        "targets: overhead <= 10 ms median (paired): {}; sandbox <= 5 ms (bare): {}; stdlib cold \
         start <= 150 ms median: {}; 100 % success: {}; one activation: {}; <= 16 KiB per held \
         request: {}",
        verdict(o50 <= 10.0),
        verdict(bwrap_ms - true_ms <= 5.0),
        verdict(g50 <= 150.0),
        verdict(ok == burst),
        verdict(activations == 1.0),
        verdict(per_held <= 16.0 * 1024.0),
    );
    write_section("coldstart", &table);
}
