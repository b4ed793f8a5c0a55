//! Training: the configuration, the loop, learning-rate schedules and checkpoints.

pub mod checkpoint;
pub mod config;
pub mod embed;
pub mod feed;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{is_checkpoint, load_checkpoint, save_checkpoint, Checkpoint};
pub use config::{Identity, ModelKind, Precision, StageConfig, TrainConfig};
pub use embed::{embed_cells, TrainedRun, VideoEmbeddings};
pub use feed::{Fed, Feed};
pub use schedule::{Decay, LrSchedule, Plateau, ScheduleConfig};
pub use trainer::{
    Resume, RunState, StagePlan, StepRecord, StepTimes, TrainModel, TrainOutputs, Trainer, Validator, ENCODER,
};
