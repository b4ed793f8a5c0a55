//! Learning rate per step: linear warm-up, then cosine or step decay (or constant).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// How the learning rate decays after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Half a cosine from the base rate down to `min_lr_ratio` × base at the last step.
    #[default]
    Cosine,
    /// Multiply by `gamma` every `step_epochs` epochs (the re-identification recipes).
    Step,
    /// No decay.
    Constant,
    /// MitoReID's `adapt`: multiply by `gamma` when validation mAP has not improved for
    /// `plateau_patience` validations (PyTorch's ReduceLROnPlateau, mode max), counted
    /// after the stage's `hold_epochs`. The trainer keeps the count in the run state.
    Plateau,
}

/// The learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Epochs of linear warm-up from base/warm-up-steps to the base rate (0: none).
    pub warmup_epochs: f64,
    /// `cosine` (default), `step` or `constant`.
    pub decay: Decay,
    /// Step decay: epochs between two decays.
    pub step_epochs: usize,
    /// Step decay: the factor.
    pub gamma: f64,
    /// Cosine decay: the final rate, as a share of the base rate.
    pub min_lr_ratio: f64,
    /// Plateau decay: validations without a better mAP before the rate is multiplied by
    /// `gamma` (MitoReID's `lr_patience`: 3).
    pub plateau_patience: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_epochs: 1.0,
            decay: Decay::Cosine,
            step_epochs: 10,
            gamma: 0.1,
            min_lr_ratio: 0.01,
            plateau_patience: 3,
        }
    }
}

impl ScheduleConfig {
    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("schedule.warmup_epochs", self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite(), "must be >= 0"),
            ("schedule.step_epochs", self.step_epochs > 0, "must be at least 1"),
            ("schedule.gamma", self.gamma > 0.0 && self.gamma <= 1.0, "must be in (0, 1]"),
            ("schedule.min_lr_ratio", (0.0..=1.0).contains(&self.min_lr_ratio), "must be in [0, 1]"),
            ("schedule.plateau_patience", self.plateau_patience > 0, "must be at least 1"),
        ];
        for (field, ok, what) in checks {
            if !ok {
                return Err(ModelError::config(field, what));
            }
        }
        Ok(())
    }
}

/// The schedule of one training stage.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    cfg: ScheduleConfig,
    base: f64,
    steps_per_epoch: usize,
    warmup_steps: usize,
    total_steps: usize,
}

impl LrSchedule {
    /// The schedule of `base_lr` over `epochs` of `steps_per_epoch`.
    pub fn new(cfg: &ScheduleConfig, base_lr: f64, steps_per_epoch: usize, epochs: usize) -> Result<Self> {
        cfg.validate()?;
        if steps_per_epoch == 0 {
            return Err(ModelError::config(
                "schedule",
                "an epoch has no steps (too few training videos for one P x K batch?)",
            ));
        }
        let total_steps = steps_per_epoch * epochs;
        let warmup_steps = ((cfg.warmup_epochs * steps_per_epoch as f64).round() as usize).min(total_steps);
        Ok(Self { cfg: cfg.clone(), base: base_lr, steps_per_epoch, warmup_steps, total_steps })
    }

    /// Steps in all.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// The rate of step `step` (0-based) of the stage.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.cfg.decay {
            // The plateau's decays are the trainer's: they follow validation, not the step.
            Decay::Constant | Decay::Plateau => self.base,
            Decay::Step => self.base * self.cfg.gamma.powi((step / self.steps_per_epoch / self.cfg.step_epochs) as i32),
            Decay::Cosine => {
                let span = (self.total_steps - self.warmup_steps).max(1);
                let p = ((step - self.warmup_steps) as f64 / (span.saturating_sub(1)).max(1) as f64).min(1.0);
                let min = self.base * self.cfg.min_lr_ratio;
                min + (self.base - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

/// ReduceLROnPlateau (mode max, PyTorch's default relative threshold 1e-4): the state a
/// run keeps between validations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// The best score since the plateau started counting.
    pub best: Option<f64>,
    /// Validations since it improved.
    pub stale: usize,
    /// Decays so far: the rate is multiplied by `gamma` to this power.
    pub decays: u32,
}

impl Plateau {
    /// Records a validation score; returns whether the rate was just decayed.
    pub fn observe(&mut self, score: f64, patience: usize) -> bool {
        if self.best.is_none_or(|b| score > b * (1.0 + 1e-4)) {
            self.best = Some(score);
            self.stale = 0;
            return false;
        }
        self.stale += 1;
        if self.stale >= patience {
            self.decays += 1;
            self.stale = 0;
            return true;
        }
        false
    }

    /// The factor on the scheduled rate.
    pub fn factor(&self, cfg: &ScheduleConfig) -> f64 {
        cfg.gamma.powi(self.decays as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_cosine_reaches_the_floor_at_the_last_step() {
        let cfg = ScheduleConfig { warmup_epochs: 1.0, min_lr_ratio: 0.1, ..Default::default() };
        let s = LrSchedule::new(&cfg, 1.0, 10, 5).unwrap();
        assert_eq!(s.total_steps(), 50);
        // Linear warm-up over the first epoch: 0.1, 0.2, ..., 1.0.
        for step in 0..10 {
            assert!((s.lr(step) - (step + 1) as f64 / 10.0).abs() < 1e-12);
        }
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(49) - 0.1).abs() < 1e-12);
        // Halfway through the decay: halfway between base and floor.
        let mid = s.lr(10 + 39 / 2);
        assert!((mid - 0.55).abs() < 0.02, "{mid}");
        for step in 10..49 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }

    #[test]
    fn step_decay_changes_at_epoch_boundaries() {
        let cfg =
            ScheduleConfig { warmup_epochs: 0.0, decay: Decay::Step, step_epochs: 2, gamma: 0.5, ..Default::default() };
        let s = LrSchedule::new(&cfg, 0.8, 3, 6).unwrap();
        let per_epoch: Vec<f64> = (0..6).map(|e| s.lr(e * 3)).collect();
        assert_eq!(per_epoch, vec![0.8, 0.8, 0.4, 0.4, 0.2, 0.2]);
        assert_eq!(s.lr(5), 0.8);
    }

    #[test]
    fn the_plateau_decays_after_patience_validations_without_gain() {
        let cfg = ScheduleConfig { decay: Decay::Plateau, plateau_patience: 3, gamma: 0.1, ..Default::default() };
        let mut p = Plateau::default();
        // As PyTorch's ReduceLROnPlateau(mode="max", factor=0.1, patience=2) steps on these.
        let scores = [10.0, 12.0, 12.0, 11.0, 12.0005, 13.0, 13.0, 13.0, 13.0, 9.0, 9.0, 9.0];
        let decayed: Vec<bool> = scores.iter().map(|&s| p.observe(s, cfg.plateau_patience)).collect();
        let at: Vec<usize> = decayed.iter().enumerate().filter(|d| *d.1).map(|d| d.0).collect();
        // 12.0005 is not better than 12 by the relative threshold: the third stale call decays.
        assert_eq!(at, vec![4, 8, 11]);
        assert!((p.factor(&cfg) - 1e-3).abs() < 1e-12);
        let s = LrSchedule::new(&ScheduleConfig { warmup_epochs: 0.0, ..cfg }, 0.5, 4, 3).unwrap();
        assert!((0..12).all(|step| s.lr(step) == 0.5));
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let err = ScheduleConfig { gamma: 0.0, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(err.contains("schedule.gamma"), "{err}");
        let err = LrSchedule::new(&ScheduleConfig::default(), 0.1, 0, 3).unwrap_err().to_string();
        assert!(err.contains("no steps"), "{err}");
        let err = toml::from_str::<ScheduleConfig>("decay = \"linear\"").unwrap_err().to_string();
        assert!(err.contains("linear"), "{err}");
    }
}
