//! The live progress line of a run on stderr: an `indicatif` bar redrawn in place on a
//! terminal; elsewhere (a log, a pipe) where indicatif draws nothing, the same text as a
//! plain line once per [`PLAIN_EVERY`]. The reports on stdout never go through here.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    bar: ProgressBar,
    next_plain: Instant,
}

impl Progress {
    /// A bar up to `len` (of `unit`s), or a spinner when the end is not known.
    pub fn new(len: Option<u64>, unit: &str) -> Progress {
        let (bar, template) = match len {
            Some(n) => (
                ProgressBar::new(n),
                format!("{{prefix}} [{{bar:24}}] {{pos}}/{{len}} {unit}, {{msg}}"),
            ),
            None => (
                ProgressBar::new_spinner(),
                format!("{{prefix}} {{spinner}} {{pos}} {unit}, {{msg}}"),
            ),
        };
        let style = ProgressStyle::with_template(&template).expect("a valid progress template");
        bar.set_style(style.progress_chars("=> "));
        Progress {
            bar,
            next_plain: Instant::now() + PLAIN_EVERY,
        }
    }

    /// Shows `pos` with `label` before the bar and `detail` after it; `plain` is the whole line
    /// for a stderr that is not a terminal.
    pub fn update(
        &mut self,
        label: &str,
        pos: u64,
        detail: String,
        plain: impl FnOnce() -> String,
    ) {
        if self.bar.is_hidden() {
            if Instant::now() >= self.next_plain {
                self.next_plain += PLAIN_EVERY;
                eprintln!("{}", plain());
            }
            return;
        }
        self.bar.set_prefix(label.to_string());
        self.bar.set_position(pos);
        self.bar.set_message(detail);
    }

    /// Clears the line (the report follows on stdout).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
