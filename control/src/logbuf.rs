//! A capped buffer of a function's recent output lines.

use std::collections::VecDeque;
use std::sync::Mutex;

/// The most recent lines of output, bounded in count and line length.
#[derive(Debug)]
pub struct LogBuf {
    lines: Mutex<VecDeque<String>>,
    max_lines: usize,
}

/// Lines longer than this are cut.
const MAX_LINE: usize = 4096;

impl LogBuf {
    /// A buffer keeping at most `max_lines` lines.
    pub fn new(max_lines: usize) -> Self {
        LogBuf {
            // Allocated as lines come: thousands of idle functions cost nothing here.
            lines: Mutex::new(VecDeque::new()),
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
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == self.max_lines {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
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
}
