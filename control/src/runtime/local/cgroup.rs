//! Memory and process limits of a replica, by a cgroup of its own (v1 `memory` + `pids`
//! controllers, or v2 with `memory` and `pids` delegated to us). The replica joins its cgroup
//! between fork and exec, so that nothing it starts escapes the limits.
//!
//! ```text
//! v1: /sys/fs/cgroup/{memory,pids}/<our cgroup>/poorman-faas/<scope>/<replica>
//! v2: /sys/fs/cgroup/<our cgroup>/gateway            faas itself (moved here to delegate)
//!     /sys/fs/cgroup/<our cgroup>/poorman-faas/<scope>/<replica>
//! ```
//!
//! `<scope>` names the state directory, so that two `faas` on one machine (with functions of
//! the same name) never share, or clean up, each other's cgroups.
//!
//! ```text
//! ```

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the directory holding the replicas' cgroups.
const PARENT: &str = "poorman-faas";

/// The cgroup hierarchies replicas are placed in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// Directories under which a replica's cgroup is made: one per v1 controller, one for v2.
    parents: Vec<PathBuf>,
    v2: bool,
}

/// Limits of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Bytes of memory; 0 for none.
    pub memory_bytes: u64,
    /// Processes and threads; 0 for none.
    pub max_processes: u64,
}

/// One replica's cgroup: made before the replica starts, removed after it is gone.
#[derive(Debug)]
pub struct ReplicaCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, ready for the child to open between fork and exec.
    procs: Vec<CString>,
}

// === impl Cgroups ===

impl Cgroups {
    /// Finds where this process may make cgroups with memory and pids limits; `Err` says why
    /// it cannot.
    pub fn detect(scope: &str) -> Result<Self, String> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            return Self::delegate_v2(&root.join(path.trim_start_matches('/')), scope);
        }
        let mut parents = Vec::new();
        for controller in ["memory", "pids"] {
            let path = own
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                    names.split(',').any(|n| n == controller).then_some(path)
                })
                .ok_or_else(|| format!("no cgroup v1 `{controller}` controller"))?;
            let parent = root
                .join(controller)
                .join(path.trim_start_matches('/'))
                .join(PARENT)
                .join(scope);
            fs::create_dir_all(&parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            parents.push(parent);
        }
        let me = Cgroups { parents, v2: false };
        me.remove_stale();
        Ok(me)
    }

    /// cgroup v2 allows controllers for children only in a cgroup without processes of its
    /// own: move `faas` into `gateway`, then enable memory and pids below.
    fn delegate_v2(own: &Path, scope: &str) -> Result<Self, String> {
        let write = |file: PathBuf, text: &str| {
            fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))
        };
        let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids"] {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(format!(
                    "the `{c}` controller is not available in {}",
                    own.display()
                ));
            }
        }
        let gateway = own.join("gateway");
        let top = own.join(PARENT);
        let parent = top.join(scope);
        for d in [&gateway, &parent] {
            fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        write(
            gateway.join("cgroup.procs"),
            &std::process::id().to_string(),
        )?;
        write(own.join("cgroup.subtree_control"), "+memory +pids")?;
        write(top.join("cgroup.subtree_control"), "+memory +pids")?;
        write(parent.join("cgroup.subtree_control"), "+memory +pids")?;
        let me = Cgroups {
            parents: vec![parent],
            v2: true,
        };
        me.remove_stale();
        Ok(me)
    }

    /// Empty cgroups left by replicas of a `faas` that was killed.
    fn remove_stale(&self) {
        for parent in &self.parents {
            if let Ok(dir) = fs::read_dir(parent) {
                for ent in dir.flatten() {
                    if ent.file_type().is_ok_and(|t| t.is_dir()) {
                        // Fails, as it should, for a cgroup that still has processes.
                        let _ = fs::remove_dir(ent.path());
                    }
                }
            }
        }
    }

    /// Makes the cgroup of one replica with its limits.
    pub fn create(&self, name: &str, limits: CgroupLimits) -> std::io::Result<ReplicaCgroup> {
        let mut dirs = Vec::with_capacity(self.parents.len());
        let mut procs = Vec::with_capacity(self.parents.len());
        let made = (|| {
            for parent in &self.parents {
                let dir = parent.join(name);
                if !parent.exists() {
                    // Removed while empty (by an older faas cleaning up): made again.
                    fs::create_dir_all(parent)?;
                    if self.v2 {
                        let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
                    }
                }
                match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                dirs.push(dir.clone());
                self.limit(&dir, limits)?;
                let p = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                    .map_err(std::io::Error::other)?;
                procs.push(p);
            }
            Ok(())
        })();
        // On failure, dropping it removes what was made.
        let cg = ReplicaCgroup { dirs, procs };
        made.map(|()| cg)
    }

    fn limit(&self, dir: &Path, l: CgroupLimits) -> std::io::Result<()> {
        let has = |f: &str| dir.join(f).exists();
        if l.memory_bytes > 0 {
            if self.v2 {
                fs::write(dir.join("memory.max"), l.memory_bytes.to_string())?;
                // No swapping around the limit (absent without swap accounting).
                let _ = fs::write(dir.join("memory.swap.max"), "0");
            } else if has("memory.limit_in_bytes") {
                fs::write(
                    dir.join("memory.limit_in_bytes"),
                    l.memory_bytes.to_string(),
                )?;
                if has("memory.memsw.limit_in_bytes") {
                    let _ = fs::write(
                        dir.join("memory.memsw.limit_in_bytes"),
                        l.memory_bytes.to_string(),
                    );
                }
            }
        }
        if l.max_processes > 0 && has("pids.max") {
            fs::write(dir.join("pids.max"), l.max_processes.to_string())?;
        }
        Ok(())
    }
}

// === impl ReplicaCgroup ===

impl ReplicaCgroup {
    /// The `cgroup.procs` files the child writes itself into (between fork and exec).
    pub fn procs_files(&self) -> &[CString] {
        &self.procs
    }

    /// The `cgroup.procs` files a process is moved in with from outside (a replica forked by
    /// a zygote).
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel killed a process of this cgroup for going over its memory limit.
    pub fn oom_killed(&self) -> bool {
        self.dirs.iter().any(|d| {
            // v2: `oom_kill N` in memory.events; v1: `oom_kill N` in memory.oom_control.
            ["memory.events", "memory.oom_control"].iter().any(|f| {
                fs::read_to_string(d.join(f)).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.strip_prefix("oom_kill ")
                            .and_then(|n| n.trim().parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                    })
                })
            })
        })
    }

    /// Removes the cgroup once its last process is gone (waits up to a second for exits).
    pub async fn remove(self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }
}

impl Drop for ReplicaCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}
