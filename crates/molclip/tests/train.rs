//! Training on the `tiny` simulated dataset: every model kind learns, and a NaN stops the run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use molclip::train::{Identity, ModelKind, StepRecord, TrainConfig, TrainOutputs, Trainer};
use molclip_data::DatasetIndex;

fn tiny_dataset(dir: &Path) -> DatasetIndex {
    let config = mitosim::SimConfig::preset("tiny").unwrap();
    let plan = mitosim::DatasetPlan::new(config, Path::new(".")).unwrap();
    mitosim::generate(&plan, dir, false, &|| {}).unwrap();
    DatasetIndex::scan(dir).unwrap()
}

/// Where a trainer writing into `dir` puts its checkpoint and best weights.
fn outputs(dir: &Path) -> TrainOutputs {
    TrainOutputs { checkpoint: dir.join("checkpoint"), best: dir.join("best.safetensors") }
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
    // Eight epochs of eight steps: fewer leave the video-only losses within their noise.
    cfg.stages[0].epochs = 8;
    cfg.schedule.warmup_epochs = 0.5;
    cfg.optimizer.lr = 3e-3;
    cfg
}

/// The same tensors under the same names, to the bit.
fn assert_same_weights(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let flat =
        |t: &Tensor| t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
    for (name, t) in a {
        assert_eq!(flat(t), flat(&b[name]), "{name}, {what}");
    }
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
        let state = trainer
            .train(None, &mut |_, _| {
                seen += 1;
                true
            })
            .unwrap();
        assert!(state.finished);
        let records = state.records;
        assert_eq!(seen, records.len());
        let (first, last) = (mean_loss(&records, 0), (mean_loss(&records, 6) + mean_loss(&records, 7)) / 2.0);
        eprintln!("{kind}: mean loss epoch 1 {first:.3}, epochs 7-8 {last:.3}");
        assert!(last < first, "{kind}: loss from {first} to {last}");
        let names: Vec<&str> = records[0].terms.iter().map(|(n, _)| n.name()).collect();
        match cfg.kind {
            ModelKind::Molclip => {
                assert_eq!(names, ["clip", "triplet", "ce", "center"], "{kind}");
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
    let err = trainer.train(None, &mut |_, _| true).unwrap_err().to_string();
    assert!(err.contains("step ") && err.contains("not finite"), "{err}");
    assert!(["triplet", "ce", "center", "gradient norm"].iter().any(|t| err.contains(t)), "{err}");
}

/// Batches built ahead (`data.prefetch`) are the batches built when the step asks: the same
/// run to the bit; the trainer's step times count every step, the wait for data within them.
#[test]
fn prefetching_batches_changes_no_number() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    cfg.stages[0].epochs = 2;
    let run = |prefetch: usize| {
        let cfg =
            TrainConfig { data: molclip_data::loader::DataConfig { prefetch, ..cfg.data.clone() }, ..cfg.clone() };
        let mut trainer = Trainer::new(&cfg, &index, &Device::Cpu).unwrap();
        let state = trainer.train(None, &mut |_, _| true).unwrap();
        let times = trainer.step_times();
        assert_eq!(times.steps as usize, state.records.len());
        assert!(times.data_wait <= times.total && !times.total.is_zero(), "{times:?}");
        assert!((0.0..=1.0).contains(&times.data_share()));
        (state.records, trainer.store.tensors())
    };
    let (inline, ahead) = (run(0), run(3));
    assert_eq!(inline.0, ahead.0);
    assert_same_weights(&inline.1, &ahead.1, "prefetch 0 against 3");
}

/// MitoReID's `num_mislabel` (`loss.control_mislabels`): after the stage's hold, the videos of
/// treated drugs that the classifier calls DMSO are left out of the loss; before it, and
/// without the rule, nothing changes.
#[test]
fn videos_called_the_control_leave_the_loss_only_after_the_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    (cfg.stages[0].epochs, cfg.stages[0].hold_epochs) = (3, 1);
    let run = |limit: usize| {
        let mut cfg = cfg.clone();
        cfg.loss.control_mislabels = limit;
        Trainer::new(&cfg, &index, &Device::Cpu).unwrap().train(None, &mut |_, _| true).unwrap().records
    };
    let (without, with) = (run(0), run(100));
    assert!(without.iter().all(|r| r.left_out == 0));
    // The hold (epochs 0 and 1): the same run to the bit.
    let held = without.iter().take_while(|r| r.epoch <= 1).count();
    assert_eq!(without[..held], with[..held]);
    // After it, the same until the first step that leaves a video out, then another run.
    let first = with.iter().position(|r| r.left_out > 0).expect("a video of a treated drug called DMSO after the hold");
    assert!(first >= held, "left out at step {first}, within the hold");
    assert_eq!(without[..first], with[..first]);
    assert_ne!(without[first].loss, with[first].loss);
    assert!(with[first].left_out < 100);
    // MolCLIP's CLIP term leaves the same videos out.
    let mut cfg = small("molclip");
    (cfg.stages[0].epochs, cfg.stages[0].hold_epochs, cfg.loss.control_mislabels) = (2, 0, 100);
    let records = Trainer::new(&cfg, &index, &Device::Cpu).unwrap().train(None, &mut |_, _| true).unwrap().records;
    assert!(records.iter().any(|r| r.left_out > 0) && records.iter().all(|r| r.loss.is_finite()));
}

/// bf16 autocast starts where the float32 run starts (the same weights, the products' operands
/// rounded) and trains as it does, without being the same run; TF32 needs a CUDA device.
#[test]
fn bf16_autocast_follows_the_float32_run_and_tf32_needs_cuda() {
    use molclip::train::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    cfg.stages[0].epochs = 3;
    let run = |precision: Precision| {
        let cfg = TrainConfig { precision, ..cfg.clone() };
        Trainer::new(&cfg, &index, &Device::Cpu).unwrap().train(None, &mut |_, _| true).unwrap().records
    };
    let (full, bf16) = (run(Precision::F32), run(Precision::Bf16));
    assert_ne!(full, bf16, "autocast changed nothing");
    let first = (bf16[0].loss - full[0].loss).abs() / full[0].loss;
    let (a, b) = (mean_loss(&full, 2), mean_loss(&bf16, 2));
    eprintln!("first step: loss off by {first:.2e}; last epoch's mean loss f32 {a:.4}, bf16 {b:.4}");
    assert!(first > 0.0 && first < 1e-2, "{first}");
    assert!((a - b).abs() < 0.15 * a, "{a} {b}");
    assert!(b < mean_loss(&bf16, 0), "bf16: the loss did not go down");
    let tf32 = TrainConfig { precision: Precision::Tf32, ..cfg.clone() };
    let err = Trainer::new(&tf32, &index, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("precision") && err.contains("CUDA"), "{err}");
}

/// Stopped mid-epoch and resumed from the last checkpoint, a run ends with the same weights
/// and the same log as a run that was never interrupted, across a stage change too.
#[test]
fn a_resumed_run_ends_exactly_like_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("molclip");
    cfg.stages = TrainConfig::default().stages;
    cfg.stages[0].epochs = 1;
    cfg.stages[1].epochs = 2;
    cfg.loss.center = 0.01;
    cfg.checkpoint_every = 3;
    // Batches built ahead on the loader's thread: a stop leaves some built and unused.
    cfg.data.prefetch = 2;
    let (a, b) = (outputs(&tmp.path().join("a")), outputs(&tmp.path().join("b")));
    let full = Trainer::new(&cfg, &index, &Device::Cpu).unwrap().train(Some(&a), &mut |_, _| true).unwrap();
    for stop_at in [5u64, 17] {
        let _ = std::fs::remove_dir_all(tmp.path().join("b"));
        let stopped =
            Trainer::new(&cfg, &index, &Device::Cpu).unwrap().train(Some(&b), &mut |_, s| s.step < stop_at).unwrap();
        assert!(!stopped.finished && stopped.step == stop_at);
        // The checkpoint holds the config; resuming with another one is refused.
        let mut other = cfg.clone();
        other.seed += 1;
        let err = Trainer::resume(&other, &index, &Device::Cpu, &b.checkpoint).err().unwrap().to_string();
        assert!(err.contains("differs"), "{err}");
        let mut resumed = Trainer::resume(&cfg, &index, &Device::Cpu, &b.checkpoint).unwrap();
        let at = resumed.resumed_at().expect("a resumed trainer");
        assert!(at.step == stop_at && !at.is_complete(&cfg.stages), "stopped at step {stop_at}");
        let end = resumed.train(Some(&b), &mut |_, _| true).unwrap();
        assert!(end.finished);
        assert_eq!(end.records, full.records, "stopped at step {stop_at}");
        let wa = molclip::nn::read_safetensors(&a.checkpoint.join("model.safetensors")).unwrap();
        assert_same_weights(&wa, &resumed.store.tensors(), &format!("stopped at step {stop_at}"));
    }
}

/// The plan counts each stage's classes, videos and first-epoch batches as the training then
/// takes them; a stage with fewer classes than P is refused when the trainer is made, naming
/// the stage and the P that would fit; a resumed trainer knows where it stands.
#[test]
fn the_plan_is_what_the_training_takes_and_an_unfillable_stage_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    cfg.stages = TrainConfig::default().stages;
    (cfg.stages[0].epochs, cfg.stages[1].epochs) = (1, 1);
    let train = index.split(molclip_data::Split::Train).count();
    let mut trainer = Trainer::new(&cfg, &index, &Device::Cpu).unwrap();
    assert!(trainer.resumed_at().is_none());
    let plan = trainer.plan().unwrap();
    // The tiny preset: 11 training drugs and 5 MoAs + DMSO, every training video in both tasks.
    let counted: Vec<_> = plan.iter().map(|s| (s.identity, s.classes, s.videos, s.epochs)).collect();
    assert_eq!(counted, [(Identity::Drug, 11, train, 1), (Identity::Moa, 6, train, 1)]);
    let out = outputs(&tmp.path().join("run"));
    let state = trainer.train(Some(&out), &mut |_, _| true).unwrap();
    for (si, stage) in plan.iter().enumerate() {
        let taken = state.records.iter().filter(|r| r.stage == si).count();
        assert_eq!(taken, stage.steps_per_epoch, "stage {}", si + 1);
    }
    let resumed = Trainer::resume(&cfg, &index, &Device::Cpu, &out.checkpoint).unwrap();
    assert!(resumed.resumed_at().unwrap().is_complete(&cfg.stages), "the last epoch's checkpoint is complete");
    // A skipped stage plans nothing.
    cfg.stages[1].epochs = 0;
    let skipped = Trainer::new(&cfg, &index, &Device::Cpu).unwrap().plan().unwrap()[1];
    assert_eq!((skipped.videos, skipped.steps()), (0, 0));
    // P = 7: the drug stage could draw it, the MoA stage cannot.
    cfg.stages[1].epochs = 1;
    cfg.data.sampler.p = 7;
    let err = Trainer::new(&cfg, &index, &Device::Cpu).err().expect("6 MoAs cannot fill P = 7").to_string();
    assert!(err.contains("`data.sampler.p`: stage 2 (moa): the training videos hold 6 MoAs"), "{err}");
    assert!(err.contains("--set data.sampler.p=6"), "{err}");
}

/// Validation runs every `validate_every` epochs; with `patience`, a stage whose mAP stops
/// improving ends early and the best weights are kept.
#[test]
fn early_stopping_ends_a_stage_when_validation_stops_improving() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    cfg.stages[0].epochs = 6;
    cfg.validate_every = 1;
    cfg.patience = 2;
    let mut trainer = Trainer::new(&cfg, &index, &Device::Cpu).unwrap();
    // A validation score that peaks after the second epoch.
    let scores = std::cell::RefCell::new(vec![10.0, 30.0, 20.0, 15.0, 12.0, 11.0].into_iter());
    let scores = std::rc::Rc::new(scores);
    let s = scores.clone();
    trainer.set_validator(Box::new(move |_| {
        let v = s.borrow_mut().next().unwrap();
        Ok((v, 0.0))
    }));
    let run = outputs(&tmp.path().join("run"));
    let state = trainer.train(Some(&run), &mut |_, _| true).unwrap();
    let validated: Vec<(usize, f64)> =
        state.records.iter().filter_map(|r| r.validation.map(|v| (r.epoch, v.0))).collect();
    // Epochs 1 and 2 improve, 3 and 4 do not: the stage stops after epoch 4 of 6.
    assert_eq!(validated, vec![(0, 10.0), (1, 30.0), (2, 20.0), (3, 15.0)]);
    assert_eq!(state.records.last().unwrap().epoch, 3);
    assert!(run.best.exists());
}

#[test]
fn the_plateau_counts_after_the_hold_and_early_stopping_follows_the_stage() {
    use molclip::train::{Decay, ScheduleConfig};
    let tmp = tempfile::tempdir().unwrap();
    let index = tiny_dataset(&tmp.path().join("tiny"));
    let mut cfg = small("video-only");
    cfg.schedule =
        ScheduleConfig { warmup_epochs: 0.0, decay: Decay::Plateau, plateau_patience: 2, ..ScheduleConfig::default() };
    cfg.validate_every = 0;
    let stage = &mut cfg.stages[0];
    (stage.epochs, stage.hold_epochs, stage.validate_every, stage.patience) = (9, 2, Some(1), Some(4));
    let mut trainer = Trainer::new(&cfg, &index, &Device::Cpu).unwrap();
    // Drug mAP after each epoch: better during the hold, then flat.
    let scores = [50.0, 60.0, 55.0, 55.0, 55.0, 55.0, 55.0, 55.0, 55.0];
    let mut k = 0;
    trainer.set_validator(Box::new(move |_| {
        k += 1;
        Ok((scores[k - 1], 0.0))
    }));
    let state = trainer.train(None, &mut |_, _| true).unwrap();
    let lr_of = |epoch: usize| state.records.iter().find(|r| r.epoch == epoch).unwrap().lr;
    let base = cfg.optimizer.lr;
    // Epoch 3 starts the plateau's count (at 55); epochs 4 and 5 do not improve on it: the
    // rate falls tenfold from epoch 6 on. The best (60, in the hold) is not beaten for 4
    // validations after the hold (epochs 3 to 6): the stage stops after epoch 6.
    assert!((0..5).all(|e| (lr_of(e) - base).abs() < 1e-12), "{:?}", (0..6).map(lr_of).collect::<Vec<_>>());
    assert!((lr_of(5) - 0.1 * base).abs() < 1e-12);
    assert_eq!(state.records.last().unwrap().epoch, 5);
    assert!(state.finished);
    let validated: Vec<f64> = state.records.iter().filter_map(|r| r.validation.map(|v| v.0)).collect();
    assert_eq!(validated, scores[..6].to_vec());
}
