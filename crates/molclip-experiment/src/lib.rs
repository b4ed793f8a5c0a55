//! The experiment layer: what molclip does with a trained model, as a library. A run folder
//! and its layout ([`RunDir`]), training into one ([`Training`]), embedding a dataset with a
//! run, the analysis a report shows ([`analyse_run`]), MoA prediction ([`predict()`]) and the
//! demo ([`run_demo`]). Front ends (the `molclip` binary, notebooks) parse, show progress
//! ([`Progress`]) and print; the work is here.

pub mod analysis;
pub mod demo;
pub mod embedding;
mod error;
pub mod predict;
pub mod progress;
pub mod reference;
pub mod run_dir;
pub mod training;

pub use analysis::{analyse_run, moa_names, Analysis};
pub use demo::{run_demo, DemoOptions, DemoOutcome};
pub use embedding::{embed_dataset, embed_to_files, evaluation_splits, open_dataset, EmbeddedMetadata, EmbeddedVideos};
pub use error::{ExperimentError, Result};
pub use predict::{predict, Query};
pub use progress::{Progress, Silent};
pub use reference::{Prediction, Reference, ZeroShot};
pub use run_dir::{read_config, RunDir};
pub use training::{resolve_config, Overrides, TrainOutcome, TrainPlan, Training};
