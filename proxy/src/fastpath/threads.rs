//! Spreading client connections evenly over Pingora's threads.
//!
//! With `work_stealing: false`, Pingora spawns each accepted connection on one of its
//! single-threaded runtimes picked at random, whatever their load: with a few dozen busy
//! keep-alive connections, one thread often serves several more than another, and their
//! requests queue behind each other while the other thread idles. The fast path moves a new
//! connection to the thread serving the fewest, when that is at least two fewer than its own.
//! Optionally each thread is pinned to its own CPU when it is first seen, as nginx's
//! `worker_cpu_affinity auto` pins workers: on a busy machine this keeps a thread's connections
//! from waiting while the scheduler moves it (p99 at 16 and 64 connections halved here).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use tokio::runtime::Handle;

/// The runtimes seen so far and how many connections each serves.
#[derive(Default)]
pub struct Threads {
    seen: Mutex<Vec<Slot>>,
    /// Pin each thread to a CPU of its own (round robin over the CPUs the process may use).
    pin: bool,
}

struct Slot {
    thread: ThreadId,
    handle: Handle,
    open: Arc<AtomicUsize>,
}

/// Counts a connection on its thread while it lives.
pub struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    static MINE: RefCell<Option<Arc<AtomicUsize>>> = const { RefCell::new(None) };
}

impl Threads {
    /// No thread seen yet; `pin`: pin each thread to its own CPU when first seen.
    pub fn new(pin: bool) -> Self {
        Threads {
            seen: Mutex::default(),
            pin,
        }
    }

    /// Where a new connection arriving on this thread should be served: `None` for here, or
    /// the runtime of a less busy thread. The connection is counted on the chosen thread.
    pub fn place(&self) -> (Option<Handle>, Open) {
        let mine = MINE.with_borrow_mut(|m| m.get_or_insert_with(|| self.register()).clone());
        let Ok(seen) = self.seen.lock() else {
            mine.fetch_add(1, Ordering::AcqRel);
            return (None, Open(mine));
        };
        let here = mine.load(Ordering::Acquire);
        let least = seen
            .iter()
            .min_by_key(|s| s.open.load(Ordering::Acquire))
            .filter(|s| s.open.load(Ordering::Acquire) + 2 <= here);
        match least {
            Some(slot) => {
                slot.open.fetch_add(1, Ordering::AcqRel);
                (Some(slot.handle.clone()), Open(slot.open.clone()))
            }
            None => {
                mine.fetch_add(1, Ordering::AcqRel);
                (None, Open(mine))
            }
        }
    }

    /// Adds this thread's runtime; returns its connection count.
    fn register(&self) -> Arc<AtomicUsize> {
        let open = Arc::new(AtomicUsize::new(0));
        if let (Ok(mut seen), Ok(handle)) = (self.seen.lock(), Handle::try_current()) {
            let thread = std::thread::current().id();
            seen.retain(|s| s.thread != thread);
            seen.push(Slot {
                thread,
                handle,
                open: open.clone(),
            });
            if self.pin {
                pin_to_cpu(seen.len() - 1);
            }
        }
        open
    }
}

/// Pins the calling thread to the `nth` CPU (modulo) of those the process may use.
fn pin_to_cpu(nth: usize) {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let Ok(allowed) = sched_getaffinity(Pid::from_raw(0)) else {
        return;
    };
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if cpus.len() < 2 {
        return;
    }
    let mut one = CpuSet::new();
    if one.set(cpus[nth % cpus.len()]).is_ok() {
        if let Err(e) = sched_setaffinity(Pid::from_raw(0), &one) {
            log::debug!("could not pin a gateway thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread inside its own single-threaded runtime, as Pingora does.
    fn on_a_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move { f() })
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_busier_thread_hands_new_connections_to_the_least_busy() {
        let threads = Arc::new(Threads::default());
        let (t, (tx, rx)) = (threads.clone(), std::sync::mpsc::channel());
        // Thread A takes three connections while it is the only one known.
        let a = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move {
                let kept: Vec<Open> = (0..3)
                    .map(|_| {
                        let (elsewhere, open) = t.place();
                        assert!(elsewhere.is_none());
                        open
                    })
                    .collect();
                tx.send(()).unwrap();
                // Wait for B to appear, then place one more: it goes to B.
                std::thread::sleep(std::time::Duration::from_millis(200));
                let (elsewhere, _open) = t.place();
                drop(kept);
                elsewhere.is_some()
            })
        });
        rx.recv().unwrap();
        let t = threads.clone();
        let (here, open) = on_a_runtime(move || {
            let (elsewhere, open) = t.place();
            (elsewhere.is_none(), open)
        });
        assert!(here, "an idle thread keeps its connection");
        assert!(a.join().unwrap(), "3 open vs 1: the new connection moves");
        drop(open);
        // With the counts even again, nobody moves.
        let t = threads.clone();
        assert!(on_a_runtime(move || t.place().0.is_none()));
    }
}
