//! Preparing a script's environment with `uv` at deploy time, so that a cold start only starts
//! the interpreter: `uv sync --script --compile-bytecode` installs the dependencies and compiles
//! them (cold starts then depend neither on `PYTHONDONTWRITEBYTECODE` nor on a writable cache),
//! and `uv python find --script` names the environment's interpreter, which replicas run directly.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{Error, Result};

/// A prepared script environment: what a replica runs, and the directories it must be able to
/// read (mounted read-only into its sandbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonEnv {
    /// The environment's interpreter (`<venv>/bin/python`).
    pub python: PathBuf,
    /// The environment's directory.
    pub venv: PathBuf,
    /// The base interpreter's installation (`home` of `pyvenv.cfg`, one level up).
    pub base_prefix: Option<PathBuf>,
    /// uv's cache, where the environment's packages live.
    pub uv_cache: Option<PathBuf>,
}

impl PythonEnv {
    /// Whether the interpreter is still there (uv's cache may have been cleaned).
    pub fn exists(&self) -> bool {
        self.python.exists()
    }

    /// Directories a replica reads: the environment, its base interpreter and uv's cache.
    pub fn read_only_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [
            self.uv_cache.clone(),
            self.base_prefix.clone(),
            Some(self.venv.clone()),
        ]
        .into_iter()
        .flatten()
        .collect();
        // The venv's interpreter may be a symlink chain into another installation.
        if let Ok(real) = std::fs::canonicalize(&self.python) {
            if let Some(prefix) = real.parent().and_then(Path::parent) {
                dirs.push(prefix.to_path_buf());
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Resolves, installs and bytecode-compiles the script's dependencies, then finds its
/// interpreter. Progress lines are logged; on failure the error carries uv's reason.
pub async fn prepare(uv: &str, script: &Path, name: &str) -> Result<PythonEnv> {
    let mut cmd = uv_command(uv);
    cmd.arg("sync")
        .arg("--script")
        .arg(script)
        .arg("--compile-bytecode");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| not_started(uv, e))?;
    let mut output = Vec::new();
    if let Some(err) = child.stderr.take() {
        let mut lines = BufReader::new(err).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log::info!("deploy {name}: uv: {line}");
            crate::progress::report(format!("uv: {line}"));
            output.push(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::internal("waiting for uv", e))?;
    if !status.success() {
        let reason: Vec<&str> = output
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
            .collect();
        return Err(Error::Unprocessable(format!(
            "uv could not prepare the function's environment: {}",
            if reason.is_empty() {
                format!("uv exited with {status}")
            } else {
                reason.join(" ")
            }
        )));
    }
    let python = PathBuf::from(run(uv, &["python", "find", "--script"], Some(script)).await?);
    let venv = python
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::internal("finding the script's environment", "no venv"))?;
    let base_prefix = std::fs::read_to_string(venv.join("pyvenv.cfg"))
        .ok()
        .and_then(|cfg| {
            cfg.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "home").then(|| PathBuf::from(v.trim()))
            })
        })
        .and_then(|home| home.parent().map(Path::to_path_buf));
    let uv_cache = run(uv, &["cache", "dir"], None)
        .await
        .ok()
        .map(PathBuf::from);
    crate::progress::report("environment ready; starting the function");
    Ok(PythonEnv {
        python,
        venv,
        base_prefix,
        uv_cache,
    })
}

/// Runs a short uv query; its trimmed stdout.
async fn run(uv: &str, args: &[&str], script: Option<&Path>) -> Result<String> {
    let mut cmd = uv_command(uv);
    cmd.args(args);
    if let Some(s) = script {
        cmd.arg(s);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.output().await.map_err(|e| not_started(uv, e))?;
    if !out.status.success() {
        return Err(Error::Unprocessable(format!(
            "`uv {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn not_started(uv: &str, e: std::io::Error) -> Error {
    Error::internal(
        format!("starting `{uv}` (set FAAS_UV to the uv executable)"),
        e,
    )
}

/// Variables of `faas`'s own environment that uv may see: where its cache and interpreters
/// are, how it reaches the package index. Nothing else (not the admin token, not the host's
/// credentials): uv runs build backends of the function's dependencies, which are user code.
const UV_PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "XDG_CONFIG_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "PYENV_ROOT",
];

/// A uv command with a clean environment (see [`UV_PASSTHROUGH`]), not pinned to a CPU.
fn uv_command(uv: &str) -> Command {
    let mut cmd = Command::new(uv);
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        let Some(key) = k.to_str() else { continue };
        if UV_PASSTHROUGH.contains(&key) || key.starts_with("UV_") {
            cmd.env(&k, &v);
        }
    }
    no_downloads_unless_asked(&mut cmd);
    super::affinity::unpinned(&mut cmd);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Python downloads need github.com; unless the operator asks for them, uv only uses the
/// interpreters it finds, so that an unsatisfiable `requires-python` fails fast and clearly.
fn no_downloads_unless_asked(cmd: &mut Command) {
    if std::env::var_os("UV_PYTHON_DOWNLOADS").is_none() {
        cmd.env("UV_PYTHON_DOWNLOADS", "never");
    }
    cmd.env("UV_NO_PROGRESS", "1");
}
