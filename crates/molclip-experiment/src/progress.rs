//! How long work reports its progress: the experiment layer says what it is doing and how
//! far it is; the front end (a terminal's progress bars, a notebook's, nothing) shows it.

/// A receiver of progress: one phase at a time, each with a length once known.
pub trait Progress: Sync {
    /// A new phase, `what`, of `total` units (0 while unknown).
    fn start(&self, what: &str, total: u64);
    /// The current phase's length, once known.
    fn set_total(&self, total: u64);
    /// `n` more units of the current phase are done.
    fn advance(&self, n: u64);
    /// The current phase is at unit `position`.
    fn set_position(&self, position: u64);
    /// A status line for the current phase (a training step's loss).
    fn message(&self, message: &str);
    /// The current phase is over.
    fn finish(&self);
    /// A line about what happens next, between phases.
    fn note(&self, line: &str);
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn message(&self, _: &str) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
}

/// A dataset scan's progress callback, feeding `progress`.
pub(crate) fn scan(progress: &dyn Progress) -> impl Fn(molclip_data::index::Progress) + Sync + '_ {
    move |p| match p {
        molclip_data::index::Progress::Total(n) => progress.set_total(n as u64),
        molclip_data::index::Progress::Cell => progress.advance(1),
    }
}
