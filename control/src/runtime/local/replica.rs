//! One replica of a local function: forked from its version's zygote ([`super::zygote`]) or its
//! interpreter started in a sandbox, in a session and process group of its own, supervised —
//! published as an endpoint once its port accepts connections, restarted with backoff when it
//! crashes, drained and stopped (whole group) when asked. A replica whose fork fails, or whose
//! forked process exits before it is ready, starts again at once the direct way.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::forker::{Forker, StartPath};
use super::listen::listening_ports;
use super::packets::Packets;
use super::sandbox::{Confinement, Launch, Sandbox};
use super::store::Store;
use super::uv::PythonEnv;
use super::zygote::{listening, ForkRequest, Forked, Zygote};
use crate::function::Limits;
use crate::logbuf::LogBuf;
use crate::registry::{Endpoint, FnEntry};

/// Everything a replica needs to run.
#[derive(Clone)]
pub(super) struct ReplicaCtx {
    pub entry: Arc<FnEntry>,
    pub script: PathBuf,
    pub python: Arc<PythonEnv>,
    pub limits: Limits,
    pub env: Arc<Vec<(String, String)>>,
    pub logs: Arc<LogBuf>,
    pub sandbox: Arc<Sandbox>,
    pub store: Store,
    pub drain_timeout: Duration,
    pub forker: Arc<Forker>,
}

/// A replica's process: a child of ours, or one its zygote forked.
enum Proc {
    Spawned(Child),
    Forked(Forked),
}

/// A running replica and the handle to stop it. Dropping it stops it too (without waiting), so
/// that no error path leaves a supervisor and its processes behind.
pub(super) struct Replica {
    pub id: u64,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A replica that ran this long before crashing restarts without delay growth.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a stopped replica gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

impl Replica {
    /// Starts supervising replica `id`.
    pub fn start(ctx: ReplicaCtx, id: u64) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(ctx, id, stop_rx));
        Replica {
            id,
            stop,
            task: Some(task),
        }
    }

    /// Whether its supervisor still runs (it gives up only when no port or process can be had).
    pub fn alive(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Withdraws the replica from routing, lets its in-flight requests finish (bounded by the
    /// drain timeout), then stops its whole process group.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn supervise(ctx: ReplicaCtx, id: u64, mut stop: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    let tag = format!("[r{id}]");
    // After a forked process failed before it was ready: the next start is direct.
    let mut fell_back = false;
    loop {
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                ctx.entry
                    .publish_failure(format!("no free port for a replica: {e}"));
                return;
            }
        };
        let started = Instant::now();
        let (mut child, pumps, confinement, path) =
            match start(&ctx, id, port, &tag, fell_back).await {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("could not start `{}`: {e}", ctx.python.python.display());
                    ctx.logs.push(format!("{tag} {why}"));
                    ctx.entry.publish_failure(why);
                    return;
                }
            };
        ctx.forker.count(path);
        let pgid = child.pgid();
        ctx.store.record_pid(pgid);
        let chan = child.take_chan();

        // Phase 1: until ready, exit, or stop.
        let outcome = tokio::select! {
            addr = wait_ready(pgid, port, chan.as_ref()) => Ok(addr),
            status = child.wait() => Err(status),
            _ = stopped(&mut stop) => {
                terminate(&mut child, pgid).await;
                ctx.store.forget_pid(pgid);
                confinement.release().await;
                return;
            }
        };
        let status = match outcome {
            Ok(addr) => {
                log::info!(
                    "{}: replica r{id} ready on {addr} after {:?} ({})",
                    ctx.entry.name,
                    started.elapsed(),
                    path.as_str()
                );
                let ep = Arc::new(Endpoint::new(addr, id));
                ctx.entry.add_endpoint(ep.clone());
                // Phase 2: serving, until exit or stop.
                tokio::select! {
                    status = child.wait() => {
                        ctx.entry.remove_endpoint(id);
                        status
                    }
                    _ = stopped(&mut stop) => {
                        ctx.entry.remove_endpoint(id);
                        drain(&ep, ctx.drain_timeout).await;
                        terminate(&mut child, pgid).await;
                        ctx.store.forget_pid(pgid);
                        confinement.release().await;
                        return;
                    }
                }
            }
            Err(status) if path == StartPath::Zygote && !confinement.oom_killed() => {
                // The script's module code may not run in a fork: start it the direct way, at
                // once; if it fails there too, that failure is the one reported.
                for p in pumps {
                    let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
                }
                ctx.forker.turn_off(format!(
                    "a forked replica exited ({}) before it was ready",
                    status.as_ref().map(|s| s.to_string()).unwrap_or_default()
                ));
                if pgid > 0 {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                ctx.store.forget_pid(pgid);
                confinement.release().await;
                fell_back = true;
                continue;
            }
            Err(status) => {
                // Let the last lines reach the log before quoting them.
                for p in pumps {
                    let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
                }
                if confinement.oom_killed() {
                    ctx.logs.push(format!("{tag} {}", over_memory(&ctx)));
                }
                let why = exit_before_ready(&ctx, &tag, &status);
                log::warn!("{}: {why}", ctx.entry.name);
                ctx.entry.publish_failure(why);
                status
            }
        };
        // The group may outlive its leader: clear it.
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        ctx.store.forget_pid(pgid);
        if confinement.oom_killed() {
            ctx.logs.push(format!("{tag} {}", over_memory(&ctx)));
            log::warn!("{}: replica r{id} {}", ctx.entry.name, over_memory(&ctx));
        }
        confinement.release().await;
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        ctx.logs
            .push(format!("{tag} exited: {status}; restarting in {backoff:?}"));
        log::warn!(
            "{}: replica r{id} exited ({status}); restarting in {backoff:?}",
            ctx.entry.name
        );
        if started.elapsed() > HEALTHY_RUN {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Resolves once the replica is asked to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the kernel's OOM kill means for the user.
fn over_memory(ctx: &ReplicaCtx) -> String {
    let limit = ctx
        .limits
        .memory_bytes
        .map(|b| format!("{} MiB (option.memory_limit)", b >> 20))
        .unwrap_or_else(|| "FAAS_FUNCTION_MEMORY_LIMIT".to_string());
    format!("was killed: it went over its memory limit of {limit}")
}

type Started = (Proc, Vec<JoinHandle<()>>, Confinement, StartPath);

/// Starts the replica's process: forked from the zygote when one is warm (and the last forked
/// attempt did not fail), else directly in its sandbox. Also returns the tasks copying its
/// output into the log, what it holds until it is gone, and how it started.
async fn start(
    ctx: &ReplicaCtx,
    id: u64,
    port: u16,
    tag: &str,
    fell_back: bool,
) -> std::io::Result<Started> {
    let mut path = if fell_back {
        StartPath::Fallback
    } else {
        StartPath::Direct
    };
    if !fell_back {
        if let Some(z) = ctx.forker.warm() {
            match fork(ctx, &z, id, port, tag).await {
                Ok((proc, pumps, confinement)) => {
                    return Ok((proc, pumps, confinement, StartPath::Zygote))
                }
                Err(why) => {
                    log::warn!(
                        "{}: replica r{id} could not be forked ({why}); starting it directly",
                        ctx.entry.name
                    );
                    path = StartPath::Fallback;
                }
            }
        }
    }
    let (child, pumps, confinement) = spawn(ctx, id, port, tag)?;
    Ok((Proc::Spawned(child), pumps, confinement, path))
}

/// Forks the replica from the zygote and places it in its own cgroup.
async fn fork(
    ctx: &ReplicaCtx,
    z: &Zygote,
    id: u64,
    port: u16,
    tag: &str,
) -> Result<(Proc, Vec<JoinHandle<()>>, Confinement), String> {
    let replica = format!("{}-r{id}", ctx.entry.name);
    let workdir = z.workdir().join(format!("r{id}"));
    let confinement = ctx
        .sandbox
        .confine_fork(&replica, &ctx.limits, workdir)
        .map_err(|e| format!("confining it: {e}"))?;
    let req = ForkRequest {
        id,
        port,
        workdir: confinement.workdir(),
    };
    let forked = match z.fork(req).await {
        Ok(f) => f,
        Err(why) => {
            confinement.release().await;
            return Err(why);
        }
    };
    // Moving a process between cgroups waits for an RCU grace period (10–20 ms): it happens
    // while the child starts. Until it is done the child counts against the zygote's cgroup,
    // which has the function's limits too.
    let adopting = confinement.adopt(forked.pid);
    let name = ctx.entry.name.clone();
    tokio::spawn(async move {
        if let Ok(Err(e)) = adopting.await {
            log::warn!("{name}: replica r{id} stays in its zygote's cgroup: {e}");
        }
    });
    let mut forked = forked;
    let pumps = forked
        .output
        .take()
        .map(|out| tokio::spawn(pump(out, ctx.logs.clone(), tag.to_string())))
        .into_iter()
        .collect();
    Ok((Proc::Forked(forked), pumps, confinement))
}

/// Starts the child in its sandbox; also returns the tasks copying its output into the log
/// and what it holds until it is gone.
fn spawn(
    ctx: &ReplicaCtx,
    id: u64,
    port: u16,
    tag: &str,
) -> std::io::Result<(Child, Vec<JoinHandle<()>>, Confinement)> {
    let replica = format!("{}-r{id}", ctx.entry.name);
    let launch = Launch {
        replica: &replica,
        script: &ctx.script,
        python: &ctx.python,
        vars: &ctx.env,
        port: Some(port),
        code: None,
        limits: &ctx.limits,
    };
    let (mut child, confinement) = ctx.sandbox.spawn(&launch, |_| {})?;
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, ctx.logs.clone(), tag.to_string())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, ctx.logs.clone(), tag.to_string())));
    }
    Ok((child, pumps, confinement))
}

/// Copies output lines into the function's log, tagged.
pub(super) async fn pump(out: impl AsyncRead + Unpin, logs: Arc<LogBuf>, tag: String) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.push(format!("{tag} {line}"));
    }
}

/// Waits until the replica listens: on `$PORT`, or — for scripts that ignore it — on whatever
/// port its process group has opened. A forked replica also says which port it listens on.
async fn wait_ready(pgid: i32, port: u16, chan: Option<&Packets>) -> SocketAddr {
    let told = async {
        match chan {
            Some(c) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], listening(c).await));
                // Its word, checked.
                match TcpStream::connect(addr).await {
                    Ok(_) => addr,
                    Err(_) => std::future::pending().await,
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        addr = told => addr,
        addr = poll_ready(pgid, port) => addr,
    }
}

async fn poll_ready(pgid: i32, port: u16) -> SocketAddr {
    let assigned = SocketAddr::from(([127, 0, 0, 1], port));
    let mut round = 0u32;
    loop {
        if TcpStream::connect(assigned).await.is_ok() {
            return assigned;
        }
        // Scanning /proc costs more than a refused connect: every 20th round (~40 ms at first).
        if round % 20 == 19 {
            for p in listening_ports(pgid) {
                let addr = SocketAddr::from(([127, 0, 0, 1], p));
                if TcpStream::connect(addr).await.is_ok() {
                    return addr;
                }
            }
        }
        round += 1;
        // Fast while a cold start is likely to finish (the first second), then gently: a
        // refused connect on loopback costs a few microseconds.
        tokio::time::sleep(Duration::from_millis(if round < 500 { 2 } else { 50 })).await;
    }
}

fn exit_before_ready(ctx: &ReplicaCtx, tag: &str, status: &std::io::Result<ExitStatus>) -> String {
    let tail: Vec<String> = ctx
        .logs
        .tail(400)
        .into_iter()
        .filter(|l| l.starts_with(tag))
        .collect();
    let tail = &tail[tail.len().saturating_sub(15)..];
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    let port_in_use = tail.iter().any(|l| l.contains("Address already in use"));
    let head = if port_in_use {
        "port in use: the replica could not bind its port. A script that ignores $PORT and binds \
         a fixed port (e.g. 8000) can run only one replica on this machine, and nothing else may \
         hold that port"
            .to_string()
    } else {
        format!("the function exited ({status}) before it was ready")
    };
    format!("{head}; last output:\n{}", tail.join("\n"))
}

/// Waits until nothing is in flight to `ep` or the timeout passes.
async fn drain(ep: &Endpoint, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while ep.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM to the whole group, then SIGKILL after a grace.
async fn terminate(child: &mut Proc, pgid: i32) {
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        child.kill(pgid);
        let _ = tokio::time::timeout(TERM_GRACE, child.wait()).await;
    }
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

// === impl Proc ===

impl Proc {
    /// Its process group (its pid: it leads a session of its own).
    fn pgid(&self) -> i32 {
        match self {
            Proc::Spawned(c) => c.id().map(|p| p as i32).unwrap_or(0),
            Proc::Forked(f) => f.pid,
        }
    }

    /// A forked replica's socket, on which it says when it listens.
    fn take_chan(&mut self) -> Option<Packets> {
        match self {
            Proc::Spawned(_) => None,
            Proc::Forked(f) => f.chan.take(),
        }
    }

    /// Waits until it ends.
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.wait().await,
            Proc::Forked(f) => Ok(f.wait().await),
        }
    }

    fn kill(&mut self, pgid: i32) {
        match self {
            Proc::Spawned(c) => {
                let _ = c.start_kill();
            }
            Proc::Forked(_) if pgid > 0 => {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            Proc::Forked(_) => {}
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
