//! What the command line prints: results on stdout (JSON alone with `--json`), progress and
//! errors on stderr, colour only on a terminal.

use std::io::{IsTerminal, Write};

use super::Failure;

/// Where and how to print.
pub struct Out {
    /// `--json`: stdout carries JSON and nothing else.
    pub json: bool,
    /// Colour on stderr (a terminal, and no `NO_COLOR`).
    colour_err: bool,
    /// Colour on stdout.
    colour_out: bool,
}

impl Out {
    /// Decides on colour from the terminals and `NO_COLOR`.
    pub fn new(json: bool) -> Self {
        let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Out {
            json,
            colour_err: colour && std::io::stderr().is_terminal(),
            colour_out: colour && !json && std::io::stdout().is_terminal(),
        }
    }

    /// Whether stdin is a terminal (a person who can answer a question).
    pub fn interactive(&self) -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    /// A line of result on stdout.
    pub fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A JSON value on stdout, pretty.
    pub fn json_value(&self, v: &serde_json::Value) {
        self.line(&serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// A line for the person on stderr (progress, confirmations); dim on a terminal.
    pub fn note(&self, text: &str) {
        let text = if self.colour_err {
            format!("\x1b[2m{text}\x1b[0m")
        } else {
            text.to_string()
        };
        eprintln!("{text}");
    }

    /// A success on stderr, green on a terminal.
    pub fn done(&self, text: &str) {
        if self.colour_err {
            eprintln!("\x1b[32m✓\x1b[0m {text}");
        } else {
            eprintln!("{text}");
        }
    }

    /// Bold on stdout when it is a terminal (table headers).
    pub fn bold(&self, text: &str) -> String {
        if self.colour_out {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Prints a failure as one line on stderr; the exit status.
    pub fn fail(&self, f: &Failure) -> i32 {
        if self.colour_err {
            eprintln!("\x1b[31mfaas:\x1b[0m {}", f.0);
        } else {
            eprintln!("faas: {}", f.0);
        }
        1
    }
}

/// Rows as aligned columns (two spaces apart); the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            line.push_str(cell);
            if i < last {
                line.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        line
    };
    std::iter::once(fmt(header.to_vec()))
        .chain(
            rows.iter()
                .map(|r| fmt(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

/// How long ago a time in milliseconds since the epoch was, as a person says it.
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=4 => "just now".into(),
        5..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![vec![
            "hello".to_string(),
            "1/1".to_string(),
            "u".to_string(),
        ]];
        assert_eq!(
            table(&["NAME", "READY", "URL"], &rows),
            vec!["NAME   READY  URL", "hello  1/1    u"]
        );
    }

    #[test]
    fn times_as_people_say_them() {
        assert_eq!(ago(0, 5_000), "never");
        assert_eq!(ago(1_000, 2_000), "just now");
        assert_eq!(ago(1, 90_001), "1m ago");
    }
}
