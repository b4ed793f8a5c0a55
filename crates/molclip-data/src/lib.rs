//! From files on disk to videos: the dataset index of the MitoReID layout
//! (METHOD.md section 3), its validation, frame decoding, and the
//! inspection tools (`molclip inspect`): counts, montage, difficulty.

pub mod annotation;
pub mod difficulty;
mod error;
pub mod frames;
pub mod index;
pub mod montage;

pub use annotation::{Annotation, DrugRecord};
pub use error::DataError;
pub use frames::{read_video, Video};
pub use index::{CellVideo, DatasetIndex, Problem, SplitCounts};
