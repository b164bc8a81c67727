//! A capped buffer of a function's recent output lines, which followers (`faas logs -f`) can
//! subscribe to.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// The most recent lines of output, bounded in count and line length.
#[derive(Debug)]
pub struct LogBuf {
    state: Mutex<State>,
    max_lines: usize,
}

#[derive(Debug, Default)]
struct State {
    lines: VecDeque<String>,
    /// Made by the first follower: a function nobody follows pays nothing for it.
    followers: Option<broadcast::Sender<String>>,
}

/// What a follower gets: the last lines, then every new one. The receiver closes when the
/// buffer is dropped (the function was deleted); a follower that falls more than
/// [`FOLLOW_BACKLOG`] lines behind is told how many it missed (`RecvError::Lagged`).
#[derive(Debug)]
pub struct Follow {
    /// The last lines at the time of subscribing, oldest first.
    pub recent: Vec<String>,
    /// Lines pushed after `recent`.
    pub lines: broadcast::Receiver<String>,
}

/// New lines a slow follower may be behind before it misses some.
pub const FOLLOW_BACKLOG: usize = 1024;

/// Lines longer than this are cut.
const MAX_LINE: usize = 4096;

impl LogBuf {
    /// A buffer keeping at most `max_lines` lines.
    pub fn new(max_lines: usize) -> Self {
        LogBuf {
            // Allocated as lines come: thousands of idle functions cost nothing here.
            state: Mutex::new(State::default()),
            max_lines,
        }
    }

    /// Appends one line, dropping the oldest when full.
    pub fn push(&self, mut line: String) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …");
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = &state.followers {
            if tx.send(line.clone()).is_err() {
                // The last follower left.
                state.followers = None;
            }
        }
        if state.lines.len() == self.max_lines {
            state.lines.pop_front();
        }
        state.lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let lines = &state.lines;
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last `n` lines and every line after them, none lost or repeated in between.
    pub fn follow(&self, n: usize) -> Follow {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let lines = match &state.followers {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(FOLLOW_BACKLOG);
                state.followers = Some(tx);
                rx
            }
        };
        let recent = state
            .lines
            .iter()
            .skip(state.lines.len().saturating_sub(n))
            .cloned()
            .collect();
        Follow { recent, lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines() {
        let b = LogBuf::new(3);
        for i in 0..5 {
            b.push(format!("l{i}"));
        }
        assert_eq!(b.tail(10), vec!["l2", "l3", "l4"]);
        assert_eq!(b.tail(1), vec!["l4"]);
    }

    #[tokio::test]
    async fn followers_get_the_tail_then_new_lines() {
        let b = LogBuf::new(10);
        b.push("old".into());
        b.push("last".into());
        let mut f = b.follow(1);
        assert_eq!(f.recent, vec!["last"]);
        b.push("new".into());
        assert_eq!(f.lines.recv().await.unwrap(), "new");
        drop(b);
        assert!(f.lines.recv().await.is_err(), "closed with the buffer");
    }
}
