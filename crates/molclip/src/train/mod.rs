//! Training: learning-rate schedules and checkpoints (the training loop itself is issue 7's
//! next step).

pub mod checkpoint;
pub mod schedule;

pub use checkpoint::{load_checkpoint, save_checkpoint, Checkpoint};
pub use schedule::{Decay, LrSchedule, ScheduleConfig};
