//! A zygote: a Python process of one function version that has imported the script's top-level
//! imports and frozen its heap (`zygote.py`), and forks a replica on request, in milliseconds
//! instead of the hundreds an interpreter takes to start and import.
//!
//! It runs in the function's sandbox (as a replica would: its own namespaces, read-only
//! filesystem, cgroup, clean environment with the dot file), so its children are sandboxed too:
//! they share its namespaces, `/tmp` and hostname, each has a working directory of its own, and
//! `faas` moves each one into a cgroup of its own as it starts (until the move is done, which
//! takes the kernel 10–20 ms, it counts against the zygote's cgroup, which has the function's
//! limits too).
//!
//! Protocol, over a `SOCK_SEQPACKET` socket that is the zygote's file descriptor 3, one JSON
//! object per packet:
//!
//! ```text
//! zygote → faas  {"op":"ready"} | {"op":"failed","why"}      once, after the imports
//! faas → zygote  {"op":"fork","id","env","cwd"} + fds [child's socket, log pipe]
//! zygote → faas  {"op":"forked","id"} | {"op":"refused","id","why"}
//! zygote → faas  {"op":"exit","id","status"}                  a child ended (wait status)
//! child  → faas  {"op":"hello"}  (its pid, from the kernel)  faas moves it into its cgroup
//! child  → faas  {"op":"listen","port"}                       its server listens
//! ```
//!
//! Everything the zygote and its children send is the function's word, checked before use.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::json;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::packets::Packets;
use super::sandbox::{Confinement, Launch, Sandbox};
use super::store::Store;
use super::uv::PythonEnv;
use crate::function::Limits;
use crate::logbuf::LogBuf;

/// The zygote's Python side.
const SOURCE: &str = include_str!("zygote.py");
/// How long a fork may take until the child has said hello.
const FORK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a zygote of one function version runs.
#[derive(Clone)]
pub(super) struct ZygoteSpec {
    /// The function's name.
    pub name: String,
    /// The version.
    pub version: u64,
    /// The script.
    pub script: PathBuf,
    /// Its environment.
    pub python: Arc<PythonEnv>,
    /// The dot file's entries.
    pub env: Arc<Vec<(String, String)>>,
    /// The function's limits (the zygote's own cgroup gets them too).
    pub limits: Limits,
    /// The sandbox.
    pub sandbox: Arc<Sandbox>,
    /// Records its process group.
    pub store: Store,
    /// The function's log.
    pub logs: Arc<LogBuf>,
}

/// Where a zygote is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    /// Importing.
    Starting,
    /// Imported and frozen; forks on request.
    Warm,
    /// Its imports failed or left threads running: the zygote path is off for this version.
    Failed(String),
    /// It exited or was stopped.
    Gone,
}

/// A running zygote. Dropping it stops it.
pub(super) struct Zygote {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    name: String,
    ctl: Packets,
    state: watch::Sender<State>,
    /// Its pid here (from the credentials of its `ready`), 0 until then.
    pid: AtomicI32,
    /// Its working directory; children get theirs below it.
    workdir: PathBuf,
    replies: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    exits: Mutex<HashMap<u64, oneshot::Sender<ExitStatus>>>,
}

/// A child the zygote forked: a replica's process.
pub(super) struct Forked {
    /// Its pid here; also its process group (it starts a session of its own).
    pub pid: i32,
    /// Its socket, on which it says when it listens (see [`listening`]).
    pub chan: Option<Packets>,
    /// Its standard output and error, until taken.
    pub output: Option<pipe::Receiver>,
    exit: oneshot::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

/// A fork request.
pub(super) struct ForkRequest<'a> {
    /// The replica's id.
    pub id: u64,
    /// `$PORT`.
    pub port: u16,
    /// Its working directory (inside the zygote's).
    pub workdir: &'a Path,
}

#[derive(Deserialize)]
struct Message {
    op: String,
    id: Option<u64>,
    why: Option<String>,
    status: Option<i32>,
    port: Option<u16>,
    ms: Option<u64>,
    modules: Option<u64>,
}

/// Memory of a zygote, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    /// Resident bytes.
    pub rss: u64,
    /// Proportional share: shared pages divided among the processes that share them.
    pub pss: u64,
}

// === impl Zygote ===

impl Zygote {
    /// Starts the zygote of `spec` in its sandbox.
    pub fn start(spec: &ZygoteSpec) -> std::io::Result<Zygote> {
        let (ctl, theirs) = Packets::pair()?;
        let replica = format!("{}-z{}", spec.name, spec.version);
        let launch = Launch {
            replica: &replica,
            script: &spec.script,
            python: &spec.python,
            vars: &spec.env,
            port: None,
            code: Some(SOURCE),
            limits: &spec.limits,
        };
        let (mut child, confinement) = spec
            .sandbox
            .spawn(&launch, |cmd| pass_as_fd3(cmd, theirs.as_raw_fd()))?;
        drop(theirs);
        let tag = format!("[z{}]", spec.version);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(super::replica::pump(out, spec.logs.clone(), tag.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(super::replica::pump(err, spec.logs.clone(), tag.clone()));
        }
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        spec.store.record_pid(pgid);
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            ctl,
            state: watch::Sender::new(State::Starting),
            pid: AtomicI32::new(0),
            workdir: confinement.workdir().to_path_buf(),
            replies: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
        });
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            shared.clone(),
            child,
            pgid,
            confinement,
            spec.store.clone(),
            spec.logs.clone(),
            stop_rx,
        ));
        Ok(Zygote {
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where it is in its life.
    pub fn state(&self) -> State {
        self.shared.state.borrow().clone()
    }

    /// Watches where it is in its life.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// Its pid here, once it is ready.
    pub fn pid(&self) -> Option<i32> {
        Some(self.shared.pid.load(Ordering::Acquire)).filter(|p| *p > 0)
    }

    /// Its working directory.
    pub fn workdir(&self) -> &Path {
        &self.shared.workdir
    }

    /// Its memory, while it runs.
    pub fn memory(&self) -> Option<Memory> {
        memory_of(self.pid()?)
    }

    /// Forks a replica. `Err` says why not (the caller starts the replica directly).
    pub async fn fork(&self, req: ForkRequest<'_>) -> Result<Forked, String> {
        if self.state() != State::Warm {
            return Err("the zygote is not warm".into());
        }
        let (chan, theirs) = Packets::pair().map_err(|e| format!("socketpair: {e}"))?;
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let output = pipe::Receiver::from_owned_fd(out_r).map_err(|e| format!("pipe: {e}"))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let (exit_tx, exit) = oneshot::channel();
        lock(&self.shared.replies).insert(req.id, reply_tx);
        lock(&self.shared.exits).insert(req.id, exit_tx);
        let forget = || {
            lock(&self.shared.replies).remove(&req.id);
            lock(&self.shared.exits).remove(&req.id);
        };
        let msg = json!({
            "op": "fork",
            "id": req.id,
            "cwd": req.workdir,
            "env": {
                "PORT": req.port.to_string(),
                "HOME": req.workdir,
            },
        })
        .to_string();
        let sent = self
            .shared
            .ctl
            .send(msg.as_bytes(), &[theirs.as_raw_fd(), out_w.as_raw_fd()])
            .await;
        drop((theirs, out_w));
        if let Err(e) = sent {
            forget();
            return Err(format!("the zygote is gone ({e})"));
        }
        let hello = async {
            match reply_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(why),
                Err(_) => return Err("the zygote is gone".to_string()),
            }
            match chan.recv().await {
                Ok(Some(p)) => p
                    .pid
                    .filter(|p| *p > 1)
                    .ok_or_else(|| "the child sent no credentials".to_string()),
                Ok(None) => Err("the child ended before it said hello".to_string()),
                Err(e) => Err(format!("reading the child's hello: {e}")),
            }
        };
        match tokio::time::timeout(FORK_TIMEOUT, hello).await {
            Ok(Ok(pid)) => Ok(Forked {
                pid,
                chan: Some(chan),
                output: Some(output),
                exit,
                status: None,
            }),
            Ok(Err(why)) => {
                forget();
                Err(why)
            }
            Err(_) => {
                forget();
                Err(format!("no child after {FORK_TIMEOUT:?}"))
            }
        }
    }

    /// Stops it (and so every child still running in its sandbox) and waits until it is gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads the zygote's messages until it is gone or asked to stop; then clears up after it.
async fn run(
    shared: Arc<Shared>,
    mut child: Child,
    pgid: i32,
    confinement: Confinement,
    store: Store,
    logs: Arc<LogBuf>,
    mut stop: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    loop {
        tokio::select! {
            msg = shared.ctl.recv() => match msg {
                Ok(Some(p)) => handle(&shared, &p.bytes, p.pid, started, &logs),
                _ => break,
            },
            _ = child.wait() => break,
            _ = &mut stop => break,
        }
    }
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let _ = child.kill().await;
    store.forget_pid(pgid);
    shared.pid.store(0, Ordering::Release);
    shared.state.send_modify(|s| {
        if !matches!(s, State::Failed(_)) {
            *s = State::Gone;
        }
    });
    lock(&shared.replies).clear();
    // Its children died with its sandbox (or of their parent-death signal).
    for (_, tx) in lock(&shared.exits).drain() {
        let _ = tx.send(ExitStatus::from_raw(Signal::SIGKILL as i32));
    }
    confinement.release().await;
}

fn handle(shared: &Shared, bytes: &[u8], pid: Option<i32>, started: Instant, logs: &LogBuf) {
    let Ok(m) = serde_json::from_slice::<Message>(bytes) else {
        log::warn!("{}: the zygote sent an unreadable message", shared.name);
        return;
    };
    match m.op.as_str() {
        "ready" if *shared.state.borrow() == State::Starting => {
            if let Some(p) = pid.filter(|p| *p > 1) {
                shared.pid.store(p, Ordering::Release);
            }
            log::info!(
                "{}: zygote warm after {:?} ({} modules imported in {} ms)",
                shared.name,
                started.elapsed(),
                m.modules.unwrap_or(0),
                m.ms.unwrap_or(0),
            );
            shared.state.send_replace(State::Warm);
        }
        "failed" => {
            let why = m.why.unwrap_or_else(|| "no reason given".into());
            logs.push(format!("[zygote] {why}"));
            shared.state.send_replace(State::Failed(why));
        }
        "forked" | "refused" => {
            if let Some(tx) = m.id.and_then(|id| lock(&shared.replies).remove(&id)) {
                let _ = tx.send(match m.why {
                    Some(why) if m.op == "refused" => Err(why),
                    _ => Ok(()),
                });
            }
        }
        "exit" => {
            if let Some(tx) = m.id.and_then(|id| lock(&shared.exits).remove(&id)) {
                let _ = tx.send(ExitStatus::from_raw(m.status.unwrap_or(0)));
            }
        }
        _ => log::debug!("{}: the zygote sent {:?}", shared.name, m.op),
    }
}

// === impl Forked ===

impl Forked {
    /// Waits until it ends (as its zygote reports it).
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let s = (&mut self.exit)
            .await
            .unwrap_or(ExitStatus::from_raw(Signal::SIGKILL as i32));
        self.status = Some(s);
        s
    }
}

/// Resolves with the port a forked replica listens on, once it says so on its socket; never if
/// it does not.
pub(super) async fn listening(chan: &Packets) -> u16 {
    if let Ok(Some(p)) = chan.recv().await {
        if let Ok(Message {
            port: Some(port), ..
        }) = serde_json::from_slice::<Message>(&p.bytes)
        {
            if port > 0 {
                return port;
            }
        }
    }
    std::future::pending().await
}

/// `fd` becomes file descriptor 3 of the command's process (and is inherited by its exec).
#[allow(unsafe_code)]
fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and makes only dup2/fcntl
    // syscalls (async-signal-safe) on a descriptor number chosen before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if nix::libc::fcntl(3, nix::libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Memory of a process, from `/proc/<pid>/smaps_rollup`.
pub(super) fn memory_of(pid: i32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some(Memory {
        rss: field("Rss:")?,
        pss: field("Pss:").unwrap_or(0),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The zygote's side of a status: JSON for the admin API.
pub(super) fn memory_json(m: Option<Memory>) -> serde_json::Value {
    match m {
        Some(m) => json!({"rss_bytes": m.rss, "pss_bytes": m.pss}),
        None => json!({"rss_bytes": null, "pss_bytes": null}),
    }
}
