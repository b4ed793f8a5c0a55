//! Training on the `tiny` simulated dataset: every model kind learns, and a NaN stops the run.

use std::path::Path;

use candle_core::Device;
use molclip::train::{ModelKind, StepRecord, TrainConfig, Trainer};
use molclip_data::DatasetIndex;

fn tiny_dataset(dir: &Path) -> DatasetIndex {
    let config = mitosim::SimConfig::preset("tiny").unwrap();
    let plan = mitosim::DatasetPlan::new(config, Path::new(".")).unwrap();
    mitosim::generate(&plan, dir, false, &|| {}).unwrap();
    DatasetIndex::scan(dir).unwrap()
}

/// A small, fast version of a shipped config.
fn small(kind: &str) -> TrainConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(format!("{kind}.toml"));
    let mut cfg = TrainConfig::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    cfg.model.video.i3d.width = 4;
    cfg.model.molecule.gin.hidden = 16;
    cfg.model.projection_dim = 16;
    if cfg.kind != ModelKind::SingleFrame {
        cfg.data.frames.frames = 4;
    }
    cfg.data.augment.resize = 36;
    cfg.data.augment.crop = 32;
    cfg.data.cache = true;
    cfg.data.sampler.p = 4;
    cfg.data.sampler.k = 2;
    cfg.stages.truncate(1);
    cfg.stages[0].epochs = 4;
    cfg.schedule.warmup_epochs = 0.5;
    cfg.optimizer.lr = 3e-3;
    cfg
}

fn mean_loss(records: &[StepRecord], epoch: usize) -> f32 {
    let l: Vec<f32> = records.iter().filter(|r| r.epoch == epoch).map(|r| r.loss).collect();
    l.iter().sum::<f32>() / l.len() as f32
}

#[test]
fn every_model_kind_trains_and_its_loss_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    for kind in ["molclip", "video-only", "single-frame"] {
        let cfg = small(kind);
        let mut trainer = Trainer::new(&cfg, &index, &Device::Cpu).unwrap();
        let mut seen = 0;
        let records = trainer.train(&mut |_| seen += 1).unwrap();
        assert_eq!(seen, records.len());
        let (first, last) = (mean_loss(&records, 0), mean_loss(&records, 3));
        eprintln!("{kind}: mean loss epoch 1 {first:.3}, epoch 4 {last:.3}");
        assert!(last < first, "{kind}: loss from {first} to {last}");
        let names: Vec<&str> = records[0].terms.iter().map(|(n, _)| *n).collect();
        match cfg.kind {
            ModelKind::Molclip => {
                assert_eq!(names, ["clip", "triplet", "ce"], "{kind}");
                assert!(records.iter().all(|r| r.temperature.is_some()));
            }
            _ => assert_eq!(names, ["triplet", "ce", "center"], "{kind}"),
        }
        // Warm-up, then the cosine decay.
        assert!(records[0].lr < records[records.len() / 2].lr || records.len() < 4);
        assert!(records.last().unwrap().lr < cfg.optimizer.lr);
    }
}

#[test]
fn a_nan_stops_training_and_names_the_step_and_the_term() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    // A learning rate this large sends the weights to infinity within a few steps.
    cfg.optimizer.lr = 1e30;
    cfg.clip_grad_norm = 0.0;
    let mut trainer = Trainer::new(&cfg, &index, &Device::Cpu).unwrap();
    let err = trainer.train(&mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("step ") && err.contains("not finite"), "{err}");
    assert!(["triplet", "ce", "center", "gradient norm"].iter().any(|t| err.contains(t)), "{err}");
}
