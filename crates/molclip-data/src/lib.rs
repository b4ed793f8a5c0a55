//! From files on disk to videos: the dataset index of the MitoReID layout
//! (docs/method.md section 3), its validation, frame decoding, and the
//! inspection tools (`molclip inspect`): counts, montage, difficulty.

pub mod annotation;
pub mod augment;
pub mod difficulty;
mod error;
pub use molclip_core::{Identity, Split};
pub mod frames;
pub mod index;
pub mod loader;
pub mod montage;
pub mod resize;
pub mod sampler;

pub use annotation::{Annotation, DrugRecord, JoinReport, SmilesSource};
pub use error::DataError;
pub use frames::{
    check_cell, read_video, read_video_with, verify_video, Channels, FrameOptions, NamedChannels, SampleDepth,
    ShortVideoPolicy, Video,
};
pub use index::{CellVideo, DatasetIndex, NaturalCompounds, Problem, Skip, SplitCounts, Unannotated};
