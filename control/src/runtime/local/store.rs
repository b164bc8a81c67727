//! The local runtime's state directory: each function's spec, and its script and dot file per
//! version, so that functions survive a restart of `faas`.
//!
//! ```text
//! <state>/functions/<name>/spec.json        the committed spec (names the live version)
//! <state>/functions/<name>/v<N>/main.py     script of version N
//! <state>/functions/<name>/v<N>/.env        dot file of version N
//! <state>/functions/<name>/v<N>/python.json its prepared environment (interpreter, directories)
//! <state>/run/<name>-r<id>/                 a replica's working directory (emptied at start)
//! <state>/admin-token                       the generated admin token (0600)
//! <state>/pids/<pgid>                       process groups of running replicas
//! <state>/lock                              held (flock) by the one `faas serve` using it
//! <state>/trash/                            functions being deleted
//! ```
//!
//! Every file is written to a temporary file and renamed into place, and a function exists once
//! its `spec.json` does; a delete first renames the function's directory into `trash/`. So a
//! `faas` killed at any moment leaves each function whole or absent; what it left half-done
//! (temporary files, uncommitted versions, the trash) is cleared by the next [`Store::open`].

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use super::uv::PythonEnv;
use crate::function::{parse_dot_file, FunctionDef, FunctionSpec};
use crate::{Error, Result};

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The lock on the directory, held as long as the store lives.
    _lock: Arc<Flock<fs::File>>,
}

impl Store {
    /// Opens (creating) the state directory, locking it: a second `faas serve` on the same
    /// directory is refused instead of supervising the same functions. Clears what a `faas`
    /// killed mid-operation left half-done.
    pub fn open(root: &Path) -> Result<Self> {
        for d in ["functions", "pids", "trash"] {
            fs::create_dir_all(root.join(d))
                .map_err(|e| Error::internal(format!("creating {}", root.join(d).display()), e))?;
        }
        let lock = lock(&root.join("lock"))?;
        let store = Store {
            root: root.to_path_buf(),
            _lock: Arc::new(lock),
        };
        store.recover();
        Ok(store)
    }

    /// Removes the trash, temporary files, functions never committed and versions that are not
    /// the committed one (an update or a deploy cut short).
    fn recover(&self) {
        let _ = fs::remove_dir_all(self.root.join("trash"));
        let _ = fs::create_dir_all(self.root.join("trash"));
        let Ok(dir) = fs::read_dir(self.root.join("functions")) else {
            return;
        };
        for ent in dir.flatten() {
            let fn_dir = ent.path();
            let name = ent.file_name().to_string_lossy().into_owned();
            remove_temporaries(&fn_dir);
            let committed = fs::read(fn_dir.join("spec.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<FunctionSpec>(&b).ok());
            let Some(spec) = committed else {
                log::warn!("removing function {name}: its deploy never completed");
                let _ = fs::remove_dir_all(&fn_dir);
                continue;
            };
            let live = format!("v{}", spec.version);
            for v in fs::read_dir(&fn_dir).into_iter().flatten().flatten() {
                let vname = v.file_name().to_string_lossy().into_owned();
                if v.path().is_dir() && vname != live {
                    log::info!("removing version {vname} of {name}: not the committed one");
                    let _ = fs::remove_dir_all(v.path());
                } else if v.path().is_dir() {
                    remove_temporaries(&v.path());
                }
            }
        }
    }

    fn fn_dir(&self, name: &str) -> PathBuf {
        self.root.join("functions").join(name)
    }

    /// The directory of one version of a function.
    pub fn version_dir(&self, name: &str, version: u64) -> PathBuf {
        self.fn_dir(name).join(format!("v{version}"))
    }

    /// Writes a version's script and dot file; returns the script path.
    pub fn write_version(&self, def: &FunctionDef) -> Result<PathBuf> {
        let dir = self.version_dir(&def.spec.name, def.spec.version);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        write_atomic(&dir.join(".env"), def.dot_file.as_bytes())?;
        let script = dir.join("main.py");
        write_atomic(&script, def.script.as_bytes())?;
        Ok(script)
    }

    /// Records the prepared environment of a version.
    pub fn write_python_env(&self, name: &str, version: u64, env: &PythonEnv) -> Result<()> {
        let json = serde_json::to_vec_pretty(env)
            .map_err(|e| Error::internal("encoding python.json", e))?;
        write_atomic(&self.version_dir(name, version).join("python.json"), &json)
    }

    /// The prepared environment of a version, if it was recorded.
    pub fn load_python_env(&self, name: &str, version: u64) -> Option<PythonEnv> {
        let bytes = fs::read(self.version_dir(name, version).join("python.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Makes `spec` the committed state of its function.
    pub fn commit(&self, spec: &FunctionSpec) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(spec).map_err(|e| Error::internal("encoding spec", e))?;
        write_atomic(&self.fn_dir(&spec.name).join("spec.json"), &json)
    }

    /// Removes one version's files.
    pub fn remove_version(&self, name: &str, version: u64) {
        let _ = fs::remove_dir_all(self.version_dir(name, version));
    }

    /// Removes a function entirely: its directory is first renamed into the trash (at once),
    /// then removed.
    pub fn remove(&self, name: &str) -> Result<()> {
        let trash = self
            .root
            .join("trash")
            .join(format!("{name}-{}", uuid::Uuid::new_v4()));
        match fs::rename(self.fn_dir(name), &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::internal(format!("removing function {name}"), e)),
        }
        fs::remove_dir_all(&trash)
            .map_err(|e| Error::internal(format!("removing {}", trash.display()), e))
    }

    /// Every committed function. Unreadable ones are reported and skipped.
    pub fn load_all(&self) -> Vec<FunctionDef> {
        let Ok(dir) = fs::read_dir(self.root.join("functions")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            match self.load(&name) {
                Ok(def) => out.push(def),
                Err(e) => log::warn!("skipping stored function {name}: {e}"),
            }
        }
        out
    }

    /// One committed function.
    pub fn load(&self, name: &str) -> Result<FunctionDef> {
        let spec_path = self.fn_dir(name).join("spec.json");
        let bytes = fs::read(&spec_path)
            .map_err(|e| Error::internal(format!("reading {}", spec_path.display()), e))?;
        let spec: FunctionSpec = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("parsing {}", spec_path.display()), e))?;
        let dir = self.version_dir(name, spec.version);
        let script = fs::read_to_string(dir.join("main.py"))
            .map_err(|e| Error::internal(format!("reading {}/main.py", dir.display()), e))?;
        let dot_file = fs::read_to_string(dir.join(".env")).unwrap_or_default();
        let env = parse_dot_file(&dot_file)?;
        Ok(FunctionDef {
            spec,
            script,
            dot_file,
            env,
        })
    }

    /// Records a running replica's process group.
    pub fn record_pid(&self, pgid: i32) {
        let _ = fs::write(self.root.join("pids").join(pgid.to_string()), b"");
    }

    /// Forgets a replica's process group.
    pub fn forget_pid(&self, pgid: i32) {
        let _ = fs::remove_file(self.root.join("pids").join(pgid.to_string()));
    }

    /// Process groups recorded by an earlier run that may still be alive; the records are removed.
    pub fn take_stale_pids(&self) -> Vec<i32> {
        let Ok(dir) = fs::read_dir(self.root.join("pids")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ent in dir.flatten() {
            if let Some(p) = ent.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(p);
            }
            let _ = fs::remove_file(ent.path());
        }
        out
    }
}

/// Locks `path` for this process (an open file description: forked children without exec are
/// not a concern, replicas are exec'd with the descriptor closed). Refuses, naming the holder,
/// when another process holds it.
fn lock(path: &Path) -> Result<Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let dir = path.parent().unwrap_or(path).display();
            return Err(Error::Unavailable(format!(
                "another faas (pid {}) is serving from the state directory {dir}: stop it, or give \
                 this one a directory of its own (FAAS_STATE_DIR)",
                holder.trim()
            )));
        }
    };
    // The holder's pid, for the message above.
    let _ = locked.set_len(0);
    let _ = locked.rewind();
    let _ = write!(locked, "{}", std::process::id());
    Ok(locked)
}

/// Removes the temporary files [`write_atomic`] leaves when it is cut short.
fn remove_temporaries(dir: &Path) {
    for ent in fs::read_dir(dir).into_iter().flatten().flatten() {
        if ent.path().extension().is_some_and(|x| x == "tmp") {
            let _ = fs::remove_file(ent.path());
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    res.map_err(|e| Error::internal(format!("writing {}", path.display()), e))
}
