//! How a replica is confined on the local runtime. Functions are other people's code, so each
//! replica runs in a [bubblewrap](https://github.com/containers/bubblewrap) sandbox:
//!
//! - its environment is its own (`PORT`, a minimal `PATH`/`HOME`/`LANG`, its dot file), nothing
//!   inherited from `faas`;
//! - the filesystem is read-only; `/tmp` is private and its working directory is the only other
//!   writable place; the state directory (other functions, the admin token), `/home`, `/root`
//!   and `faas`'s `$HOME` are hidden, except its own script, its environment and uv's cache,
//!   mounted read-only;
//! - its own PID, IPC and UTS namespaces (it sees only its own processes), a user namespace
//!   without capabilities, `no_new_privs`, a session of its own (no controlling terminal);
//! - a cgroup of its own limits its memory and processes, and `RLIMIT_NOFILE` its open files.
//!
//! It shares the network: it serves its port and may call out. Without the sandbox
//! (`FAAS_SANDBOX=false`) the environment, session and limits still apply.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::{open, OFlag};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;
use tokio::process::Command;

use super::cgroup::{CgroupLimits, Cgroups, ReplicaCgroup};
use super::uv::PythonEnv;
use crate::config::{Config, SandboxSettings};
use crate::function::Limits;
use crate::{Error, Result};

/// bubblewrap's namespaces and identity for every replica: its own user (`nobody`, 65534, no
/// capabilities), PID, IPC, UTS and cgroup namespaces, dying with `faas`.
pub const NAMESPACE_ARGS: &[&str] = &[
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
];

/// Confines replicas; made once when the local runtime starts.
#[derive(Debug)]
pub struct Sandbox {
    settings: SandboxSettings,
    cgroups: Option<Cgroups>,
    /// Directories replaced by an empty tmpfs inside the sandbox.
    hidden: Vec<PathBuf>,
    /// Where the replicas' working directories are made.
    run_dir: PathBuf,
}

/// What one replica runs.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// Unique name of the replica (`<function>-r<id>`).
    pub replica: &'a str,
    /// The script.
    pub script: &'a Path,
    /// Its prepared environment.
    pub python: &'a PythonEnv,
    /// Its dot file's entries.
    pub vars: &'a [(String, String)],
    /// `$PORT` (none for a zygote: its children get theirs).
    pub port: Option<u16>,
    /// Python source run with `-c`, the script's path as its argument (a zygote); `None` runs
    /// the script.
    pub code: Option<&'a str>,
    /// Its own limits (unset ones take the defaults).
    pub limits: &'a Limits,
}

/// What a started replica holds until it is gone: its cgroup and working directory.
#[derive(Debug)]
pub struct Confinement {
    cgroup: Option<ReplicaCgroup>,
    workdir: PathBuf,
}

// === impl Sandbox ===

impl Sandbox {
    /// Checks that the sandbox can run here (unless it is turned off) and finds the cgroups.
    pub fn new(cfg: &Config) -> Result<Self> {
        let mut settings = cfg.sandbox.clone();
        // Replicas get a minimal PATH of their own: find bubblewrap in ours, once.
        settings.bwrap = resolve(&settings.bwrap);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut hidden: Vec<PathBuf> = ["/tmp", "/var/tmp", "/home", "/root"]
            .iter()
            .map(PathBuf::from)
            .chain(home)
            .chain([cfg.state_dir.clone()])
            .filter(|p| p.is_absolute() && p != Path::new("/") && p.is_dir())
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        // Parents first: a directory inside one hidden already (a state directory under /tmp)
        // is hidden again, read-only, inside the new empty one.
        hidden.sort();
        hidden.dedup();
        let me = Sandbox {
            cgroups: match Cgroups::detect(&scope_of(&cfg.state_dir)) {
                Ok(c) => Some(c),
                Err(why) => {
                    log::warn!(
                        "functions run without memory and process limits: no cgroup can be made \
                         here ({why}); run faas as root or in a cgroup delegated to its user"
                    );
                    None
                }
            },
            settings,
            hidden,
            run_dir: cfg.state_dir.join("run"),
        };
        // Working directories of replicas of an earlier run.
        let _ = std::fs::remove_dir_all(&me.run_dir);
        if me.settings.enabled {
            me.probe()?;
        } else {
            log::warn!(
                "FAAS_SANDBOX=false: functions run unsandboxed, as the user running faas, and can \
                 read everything it can read"
            );
        }
        Ok(me)
    }

    /// Starts `true` in the sandbox once, so that a machine that cannot run it says so at start.
    fn probe(&self) -> Result<()> {
        let mut args = self.namespace_args();
        args.extend(
            [
                "--ro-bind",
                "/",
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--",
                "true",
            ]
            .map(OsString::from),
        );
        let out = std::process::Command::new(&self.settings.bwrap)
            .args(&args)
            .stdin(Stdio::null())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => format!(
                "`{}` failed: {}",
                self.settings.bwrap,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run `{}`: {e}", self.settings.bwrap),
        };
        Err(Error::BadRequest(format!(
            "the function sandbox cannot start here: {why}. Install bubblewrap (`./dev setup` puts \
             it in .venv/bin; set FAAS_BWRAP to its path) and allow user namespaces \
             (sysctl kernel.unprivileged_userns_clone=1), or set FAAS_SANDBOX=false to run \
             functions unsandboxed"
        )))
    }

    fn namespace_args(&self) -> Vec<OsString> {
        NAMESPACE_ARGS.iter().map(OsString::from).collect()
    }

    /// bubblewrap's arguments for one replica, up to and including `--`.
    fn bwrap_args(&self, launch: &Launch<'_>, workdir: &Path) -> Vec<OsString> {
        let mut a = self.namespace_args();
        let mut push = |flag: &str, paths: &[&Path]| {
            a.push(flag.into());
            a.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
        };
        push("--hostname", &[Path::new(launch.replica)]);
        push("--ro-bind", &[Path::new("/"), Path::new("/")]);
        for h in &self.hidden {
            push("--tmpfs", &[h]);
        }
        for d in launch.python.read_only_dirs() {
            if d.is_dir() {
                push("--ro-bind", &[&d, &d]);
            }
        }
        push("--ro-bind", &[launch.script, launch.script]);
        push("--bind", &[workdir, workdir]);
        push("--proc", &[Path::new("/proc")]);
        push("--dev", &[Path::new("/dev")]);
        // Hidden directories are empty and stay so; only /tmp is writable (the mounts made
        // inside them above, its working directory among them, keep their own flags).
        for h in &self.hidden {
            if h != Path::new("/tmp") {
                push("--remount-ro", &[h]);
            }
        }
        push("--chdir", &[workdir]);
        a.push("--".into());
        a
    }

    /// Starts `launch` confined: stdin closed, output piped (for the function's log), killed
    /// when its handle is dropped; `extra` adds to the command first. When it cannot start,
    /// what was made for it (cgroup, working directory) is removed.
    pub fn spawn(
        &self,
        launch: &Launch<'_>,
        extra: impl FnOnce(&mut Command),
    ) -> std::io::Result<(tokio::process::Child, Confinement)> {
        let (mut cmd, confinement) = self.command(launch)?;
        extra(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => Ok((child, confinement)),
            Err(e) => {
                tokio::spawn(confinement.release());
                Err(e)
            }
        }
    }

    /// The command of one replica, and what it holds until it is gone. The command still needs
    /// its standard streams ([`Sandbox::spawn`] sets them).
    fn command(&self, launch: &Launch<'_>) -> std::io::Result<(Command, Confinement)> {
        let workdir = self.run_dir.join(launch.replica);
        std::fs::create_dir_all(&workdir)?;
        let cgroup = self.cgroup(launch.replica, launch.limits)?;
        let mut cmd = if self.settings.enabled {
            let mut c = Command::new(&self.settings.bwrap);
            c.args(self.bwrap_args(launch, &workdir));
            c.arg(&launch.python.python);
            c
        } else {
            Command::new(&launch.python.python)
        };
        if let Some(code) = launch.code {
            cmd.arg("-c").arg(code);
        }
        cmd.arg(launch.script);
        cmd.env_clear()
            .env("PATH", path_var(launch.python))
            .env("HOME", &workdir)
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", "/tmp")
            .env("VIRTUAL_ENV", &launch.python.venv)
            .envs(launch.vars.iter().map(|(k, v)| (k, v)))
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(&workdir);
        if let Some(port) = launch.port {
            cmd.env("PORT", port.to_string());
        }
        // Never above the hard limit `faas` has: raising it needs a privilege.
        let hard = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(u64::MAX);
        let open_files = launch
            .limits
            .max_open_files
            .unwrap_or(self.settings.max_open_files)
            .min(hard);
        let procs: Vec<_> = cgroup
            .as_ref()
            .map(|c| c.procs_files().to_vec())
            .unwrap_or_default();
        in_child(&mut cmd, procs, open_files);
        super::affinity::unpinned(&mut cmd);
        Ok((cmd, Confinement { cgroup, workdir }))
    }

    /// The confinement of a replica forked by a zygote (which is sandboxed already): a cgroup
    /// of its own, which it joins with [`Confinement::adopt`], and its working directory
    /// `workdir` (inside the zygote's).
    pub fn confine_fork(
        &self,
        replica: &str,
        limits: &Limits,
        workdir: PathBuf,
    ) -> std::io::Result<Confinement> {
        std::fs::create_dir_all(&workdir)?;
        let cgroup = self.cgroup(replica, limits)?;
        Ok(Confinement { cgroup, workdir })
    }

    fn cgroup(&self, replica: &str, limits: &Limits) -> std::io::Result<Option<ReplicaCgroup>> {
        let limits = CgroupLimits {
            memory_bytes: limits.memory_bytes.unwrap_or(self.settings.memory_bytes),
            max_processes: limits.max_processes.unwrap_or(self.settings.max_processes),
        };
        match &self.cgroups {
            Some(c) => c.create(replica, limits).map(Some),
            None => Ok(None),
        }
    }
}

/// `program` as an absolute path, looked up in `faas`'s own `PATH` when it has no `/`.
fn resolve(program: &str) -> String {
    if program.contains('/') {
        return program.to_string();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string())
}

/// A short name for a state directory (FNV-1a of its path), for its cgroups.
fn scope_of(state_dir: &Path) -> String {
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
    format!("{hash:016x}")
}

/// `PATH` inside: the environment's scripts first, then the system's.
fn path_var(env: &PythonEnv) -> OsString {
    let mut p = env.venv.join("bin").into_os_string();
    p.push(":/usr/local/bin:/usr/bin:/bin");
    p
}

/// Between fork and exec: a session of its own (its own process group, no controlling
/// terminal), into its cgroup, and its open-file limit.
#[allow(unsafe_code)]
fn in_child(cmd: &mut Command, procs: Vec<std::ffi::CString>, open_files: u64) {
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe syscalls (setsid, open, write, close, setrlimit) on data prepared
    // before the fork; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            for p in &procs {
                let fd = open(
                    p.as_c_str(),
                    OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                nix::unistd::write(fd.as_fd(), b"0")?;
            }
            if open_files > 0 {
                setrlimit(Resource::RLIMIT_NOFILE, open_files, open_files)?;
            }
            Ok(())
        });
    }
}

// === impl Confinement ===

impl Confinement {
    /// Whether the replica was killed for going over its memory limit.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(ReplicaCgroup::oom_killed)
    }

    /// Its working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Moves process `pid` (a forked replica) into the cgroup, on a blocking thread: the move
    /// waits for the kernel.
    pub fn adopt(&self, pid: i32) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let procs = self
            .cgroup
            .as_ref()
            .map(ReplicaCgroup::procs_paths)
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            for p in procs {
                std::fs::write(p, pid.to_string())?;
            }
            Ok(())
        })
    }

    /// Removes the cgroup and the working directory; call once its processes are gone.
    pub async fn release(self) {
        if let Some(c) = self.cgroup {
            c.remove().await;
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(state: &Path) -> Sandbox {
        Sandbox {
            settings: SandboxSettings {
                enabled: true,
                bwrap: "bwrap".into(),
                memory_bytes: 1 << 29,
                max_processes: 64,
                max_open_files: 256,
            },
            cgroups: None,
            hidden: vec![PathBuf::from("/tmp"), state.to_path_buf()],
            run_dir: state.join("run"),
        }
    }

    #[test]
    fn only_its_own_script_and_directory_show_through() {
        let state = Path::new("/srv/faas");
        let env = PythonEnv {
            python: "/srv/uv/env/bin/python".into(),
            venv: "/srv/uv/env".into(),
            base_prefix: None,
            uv_cache: Some("/srv/uv".into()),
        };
        let limits = Limits::default();
        let launch = Launch {
            replica: "hello-r1",
            script: Path::new("/srv/faas/functions/hello/v1/main.py"),
            python: &env,
            vars: &[],
            port: Some(9000),
            code: None,
            limits: &limits,
        };
        let args: Vec<String> = sandbox(state)
            .bwrap_args(&launch, Path::new("/srv/faas/run/hello-r1"))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        // Hidden first, then the script and the working directory are mounted over.
        let hide = joined.find("--tmpfs /srv/faas").unwrap();
        let script = joined
            .find("--ro-bind /srv/faas/functions/hello/v1/main.py /srv/faas/functions/hello/v1/main.py")
            .unwrap();
        let work = joined
            .find("--bind /srv/faas/run/hello-r1 /srv/faas/run/hello-r1")
            .unwrap();
        assert!(hide < script && script < work, "{joined}");
        assert!(
            !joined.contains(".env"),
            "the dot file is never mounted: {joined}"
        );
        for flag in [
            "--unshare-pid",
            "--unshare-user",
            "--die-with-parent",
            "--cap-drop ALL",
        ] {
            assert!(joined.contains(flag), "{flag} missing: {joined}");
        }
        assert_eq!(args.last().unwrap(), "--");
    }
}
