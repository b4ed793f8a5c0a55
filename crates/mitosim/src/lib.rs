//! mitosim: a simulated MitoDataset.
//!
//! Single-cell time-lapse videos of mitochondria (membrane-potential dye)
//! under drug treatment, written in the MitoReID layout (docs/method.md section 3).
//! The signal sits where it sits in real screens (SIMULATOR.md): each MoA is a
//! time program over mitochondrial phenotypes, each drug modulates its MoA's
//! program through its Morgan fingerprint, cells respond unevenly, and
//! replicates carry batch effects. Brightness alone does not tell the MoA.
//!
//! The tree reads like the simulation:
//! - [`config`]: every parameter, presets, validation;
//! - [`library`]: drugs with real SMILES and MoAs (built in, or a table);
//! - [`biology`]: MoA phenotype programs and drug effects from structure;
//! - [`cell`]: cell body, nucleus and mitochondrial network, frame by frame;
//! - [`imaging`]: point-spread function, bleaching, drift, noise, bit depth;
//! - [`writer`]: the dataset on disk, generated in parallel;
//! - [`field`]: raw fields of view with ground truth, for segmentation and tracking.

pub mod biology;
pub mod cell;
pub mod config;
mod error;
pub mod field;
pub mod imaging;
pub mod library;
pub mod writer;

pub use config::{FrameFormat, RawConfig, RawFormat, SimConfig};
pub use error::SimError;
pub use field::{generate_raw, render_field, FieldJob, RawField, RawReport};
pub use library::{Drug, DrugLibrary};
pub use writer::{generate, render_cell_video, DatasetPlan, GenerationReport};

/// Phenotype axes of the mitochondrial network, in program order.
pub const AXES: [&str; 7] =
    ["fragmentation", "swelling", "clustering", "motility_loss", "depolarization", "hyperfusion", "apoptosis"];
/// Number of phenotype axes.
pub const N_AXES: usize = AXES.len();
