//! Preparing a script's environment with `uv` at deploy time, so that a cold start only starts
//! the interpreter.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{Error, Result};

/// Resolves and installs the script's dependencies and finds its interpreter
/// (`uv sync --script`). Progress lines are logged; on failure the error carries uv's reason.
pub async fn prepare(uv: &str, script: &Path, name: &str) -> Result<()> {
    let mut cmd = Command::new(uv);
    cmd.arg("sync").arg("--script").arg(script);
    no_downloads_unless_asked(&mut cmd);
    super::affinity::unpinned(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        Error::internal(
            format!("starting `{uv}` (set FAAS_UV to the uv executable)"),
            e,
        )
    })?;
    let mut output = Vec::new();
    if let Some(err) = child.stderr.take() {
        let mut lines = BufReader::new(err).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log::info!("deploy {name}: uv: {line}");
            output.push(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::internal("waiting for uv", e))?;
    if status.success() {
        return Ok(());
    }
    let reason: Vec<&str> = output
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    Err(Error::Unprocessable(format!(
        "uv could not prepare the function's environment: {}",
        if reason.is_empty() {
            format!("uv exited with {status}")
        } else {
            reason.join(" ")
        }
    )))
}

/// Python downloads need github.com; unless the operator asks for them, uv only uses the
/// interpreters it finds, so that an unsatisfiable `requires-python` fails fast and clearly.
pub fn no_downloads_unless_asked(cmd: &mut Command) {
    if std::env::var_os("UV_PYTHON_DOWNLOADS").is_none() {
        cmd.env("UV_PYTHON_DOWNLOADS", "never");
    }
    cmd.env("UV_NO_PROGRESS", "1");
}
