use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar with rate and ETA on stderr, hidden when quiet or not a terminal.
pub fn bar(len: u64, message: &'static str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// A bar driven by a library's progress callback (total first, then ticks).
pub fn scan_callback(bar: &ProgressBar) -> impl Fn(molclip_data::index::Progress) + Sync + '_ {
    move |p| match p {
        molclip_data::index::Progress::Total(n) => {
            bar.set_length(n as u64);
            bar.set_position(0);
        }
        molclip_data::index::Progress::Cell => bar.inc(1),
    }
}
