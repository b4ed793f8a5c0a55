//! Training: learning-rate schedules and checkpoints (the training loop itself is issue 7's
//! next step).

pub mod checkpoint;
pub mod config;
pub mod schedule;

pub use checkpoint::{load_checkpoint, save_checkpoint, Checkpoint};
pub use config::{Identity, ModelKind, StageConfig, TrainConfig};
pub use schedule::{Decay, LrSchedule, ScheduleConfig};
