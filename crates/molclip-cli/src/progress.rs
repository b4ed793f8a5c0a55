//! Progress bars on stderr: the experiment layer's [`Progress`], drawn with indicatif,
//! hidden when quiet or not a terminal.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use molclip_experiment::Progress;

/// A progress bar with rate and ETA on stderr, hidden when quiet or not a terminal.
pub fn bar(len: u64, message: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// One bar per phase; notes go to stderr unless quiet.
pub struct Bars {
    quiet: bool,
    bar: Mutex<ProgressBar>,
}

impl Bars {
    /// Bars drawn unless `quiet`.
    pub fn new(quiet: bool) -> Self {
        Self { quiet, bar: Mutex::new(ProgressBar::hidden()) }
    }

    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        f(&self.bar.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: u64) {
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = bar(total, what, self.quiet);
    }
    fn set_total(&self, total: u64) {
        self.with(|b| {
            b.set_length(total);
            b.set_position(0);
        });
    }
    fn advance(&self, n: u64) {
        self.with(|b| b.inc(n));
    }
    fn set_position(&self, position: u64) {
        self.with(|b| b.set_position(position));
    }
    fn message(&self, message: &str) {
        self.with(|b| b.set_message(message.to_string()));
    }
    fn finish(&self) {
        self.with(|b| b.finish_and_clear());
    }
    fn note(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}
