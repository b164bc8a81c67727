//! What the benchmarks share: the end-to-end harness (a running `faas`), the machine, the
//! results file.
#![allow(dead_code)]

#[path = "../../tests/harness/mod.rs"]
mod harness;

#[allow(unused_imports)] // each benchmark uses its part
pub use harness::{free_port, repo, tool, uv, Faas};

use std::process::Command;

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
