//! Function processes use every CPU the gateway process may use, even when the thread that
//! starts them is pinned to one CPU (`FAAS_PIN_THREADS`): a child inherits its parent thread's
//! CPU mask, so without this a replica started from an admin call would share one CPU with a
//! gateway thread, and one restored at start-up would not.

use std::sync::OnceLock;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tokio::process::Command;

static PROCESS_CPUS: OnceLock<CpuSet> = OnceLock::new();

/// Remembers the CPUs this process may use. Call it before any thread is pinned.
pub fn remember_process_cpus() {
    if let Ok(cpus) = sched_getaffinity(Pid::from_raw(0)) {
        let _ = PROCESS_CPUS.set(cpus);
    }
}

/// Makes the child of `cmd` start with the process's CPUs rather than its spawning thread's.
#[allow(unsafe_code)]
pub fn unpinned(cmd: &mut Command) {
    let Some(cpus) = PROCESS_CPUS.get().copied() else {
        return;
    };
    // SAFETY: the closure runs in the child between fork and exec. It makes one syscall
    // (sched_setaffinity, async-signal-safe), allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let _ = sched_setaffinity(Pid::from_raw(0), &cpus);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_of_a_pinned_thread_gets_every_cpu() {
        remember_process_cpus();
        let all = PROCESS_CPUS.get().copied().unwrap();
        let count = |set: &CpuSet| {
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .count()
        };
        if count(&all) < 2 {
            return; // a one-CPU machine: nothing to show
        }
        // A thread pinned to one CPU starts `grep Cpus_allowed_list /proc/self/status`.
        let out = std::thread::spawn(move || {
            let first = (0..CpuSet::count())
                .find(|&c| all.is_set(c).unwrap())
                .unwrap();
            let mut one = CpuSet::new();
            one.set(first).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let status = |unpin: bool| {
                    let mut cmd = Command::new("grep");
                    cmd.args(["Cpus_allowed_list", "/proc/self/status"]);
                    if unpin {
                        unpinned(&mut cmd);
                    }
                    cmd
                };
                let pinned = status(false).output().await.unwrap().stdout;
                let freed = status(true).output().await.unwrap().stdout;
                (
                    String::from_utf8(pinned).unwrap(),
                    String::from_utf8(freed).unwrap(),
                )
            })
        })
        .join()
        .unwrap();
        assert_ne!(out.0, out.1, "inherited {} vs reset {}", out.0, out.1);
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let mine = own
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .unwrap();
        assert_eq!(
            out.1.trim(),
            mine.trim(),
            "the child got the process's CPUs"
        );
    }
}
