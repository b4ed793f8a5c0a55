//! AdamW and SGD (Nesterov) with PyTorch's update rules, and their state as named tensors,
//! so that a checkpoint holds the moments and a resumed run continues exactly.
//! (candle-nn's optimisers keep their state private.)

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{adamw_in_place_all, square_sums, AdamWSlot, AdamWStep};

/// Which optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW (decoupled weight decay).
    #[default]
    AdamW,
    /// SGD with momentum (and Nesterov).
    Sgd,
}

/// The optimiser and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `adamw` (default) or `sgd`.
    pub kind: OptimizerKind,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// AdamW.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's epsilon.
    pub eps: f64,
    /// SGD.
    pub momentum: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            lr: 3e-4,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            momentum: 0.9,
            nesterov: true,
        }
    }
}

impl OptimizerConfig {
    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            ("optimizer.lr", self.lr > 0.0 && self.lr.is_finite()),
            ("optimizer.weight_decay", self.weight_decay >= 0.0),
            ("optimizer.beta1", (0.0..1.0).contains(&self.beta1)),
            ("optimizer.beta2", (0.0..1.0).contains(&self.beta2)),
            ("optimizer.eps", self.eps > 0.0),
            ("optimizer.momentum", (0.0..1.0).contains(&self.momentum)),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(ModelError::config(
                    field,
                    "out of range (lr > 0, weight_decay >= 0, betas and momentum in [0, 1), eps > 0)",
                ));
            }
        }
        Ok(())
    }
}

/// One optimiser over a fixed, named list of parameters.
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Var)>,
    /// AdamW: first and second moments; SGD: the momentum buffer (second unused).
    state: Vec<(Option<Tensor>, Option<Tensor>)>,
    steps: u64,
}

impl Optimizer {
    /// An optimiser over named parameters.
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimizerConfig) -> Result<Self> {
        cfg.validate()?;
        let state = vec![(None, None); params.len()];
        Ok(Self { cfg: cfg.clone(), params, state, steps: 0 })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters it updates.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr` (the schedule's current value). Parameters without a
    /// gradient (unused this step) are left alone, as in PyTorch.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_scaled(grads, lr, None)
    }

    /// [`Optimizer::step`] from the gradients times `scale` (gradient clipping's coefficient,
    /// [`clip_coefficient`]), the same bits as scaling them first ([`clip_grad_norm`]) without
    /// writing them: AdamW scales each value as it reads it.
    pub fn step_scaled(&mut self, grads: &GradStore, lr: f64, scale: Option<f64>) -> Result<()> {
        self.steps += 1;
        match self.cfg.kind {
            OptimizerKind::AdamW => self.adamw(grads, lr, scale.unwrap_or(1.0)),
            OptimizerKind::Sgd => self.sgd(grads, lr, scale),
        }
    }

    /// AdamW, all parameters in one call: in place on the CPU and on CUDA devices (there a
    /// few kernel launches for the whole model), composed elsewhere (on the CPU, the same
    /// bits). The moments start from zeros.
    fn adamw(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        let c = &self.cfg;
        let step = AdamWStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            lr,
            weight_decay: c.weight_decay,
            step: self.steps as i32,
            grad_scale,
        };
        // Each parameter with a gradient: its index, the parameter and gradient (detached,
        // so that the moments never hold on to a computation graph) and its moments.
        let mut todo = Vec::new();
        for (k, ((_, var), (s1, s2))) in self.params.iter().zip(self.state.iter_mut()).enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_tensor().detach();
            let (m, v) = match (s1.take(), s2.take()) {
                (Some(m), Some(v)) => (m, v),
                _ => (p.zeros_like()?, p.zeros_like()?),
            };
            todo.push((k, p, g.detach(), m, v));
        }
        // The detached parameter shares the variable's storage: updated in place, it is the
        // variable's.
        let slots: Vec<AdamWSlot<'_>> =
            todo.iter().map(|(_, p, g, m, v)| AdamWSlot { param: p, grad: g, m, v }).collect();
        let done = adamw_in_place_all(&slots, &step)?;
        drop(slots);
        for ((k, p, g, m, v), done) in todo.into_iter().zip(done) {
            let (m, v) = if done {
                (m, v)
            } else {
                let (new, m, v) = step.composed(&p, &g, Some(m), Some(v))?;
                self.params[k].1.set(&new)?;
                (m, v)
            };
            self.state[k] = (Some(m), Some(v));
        }
        Ok(())
    }

    /// SGD with momentum (and Nesterov), composed.
    fn sgd(&mut self, grads: &GradStore, lr: f64, scale: Option<f64>) -> Result<()> {
        let c = &self.cfg;
        for ((_, var), (s1, _)) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = &match scale {
                Some(s) => (g.detach() * s)?,
                None => g.detach(),
            };
            let p = &var.as_tensor().detach();
            let g = if c.weight_decay > 0.0 { (g + (p * c.weight_decay)?)? } else { g.clone() };
            let direction = if c.momentum > 0.0 {
                let buf = match s1.take() {
                    Some(b) => ((b * c.momentum)? + &g)?,
                    None => g.clone(),
                };
                let d = if c.nesterov { (&g + (&buf * c.momentum)?)? } else { buf.clone() };
                *s1 = Some(buf);
                d
            } else {
                g
            };
            var.set(&(p - (direction * lr)?)?)?;
        }
        Ok(())
    }

    /// The state as named tensors: `step`, and `exp_avg.<param>` / `exp_avg_sq.<param>`
    /// (AdamW) or `momentum_buffer.<param>` (SGD), PyTorch's names.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        let device = self.params.first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
        out.insert("step".to_string(), Tensor::new(&[self.steps as i64], &device)?);
        let (n1, n2) = self.state_names();
        for ((name, _), (s1, s2)) in self.params.iter().zip(&self.state) {
            if let Some(t) = s1 {
                out.insert(format!("{n1}.{name}"), t.clone());
            }
            if let Some(t) = s2 {
                out.insert(format!("{n2}.{name}"), t.clone());
            }
        }
        Ok(out)
    }

    /// Restores what [`Optimizer::state_tensors`] wrote.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let step = tensors
            .get("step")
            .ok_or_else(|| ModelError::Weights { what: "optimizer state".into(), message: "no `step`".into() })?;
        self.steps = step.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?[0] as u64;
        let (n1, n2) = self.state_names();
        for ((name, var), (s1, s2)) in self.params.iter().zip(self.state.iter_mut()) {
            for (slot, prefix) in [(s1, n1), (s2, n2)] {
                *slot = match tensors.get(&format!("{prefix}.{name}")) {
                    // A copy of its own: the update writes the moments in place.
                    Some(t) if t.dims() == var.dims() => {
                        Some(t.to_device(var.device())?.to_dtype(var.dtype())?.copy()?)
                    }
                    Some(t) => {
                        return Err(molclip_nn::NnError::WeightShape {
                            name: format!("{prefix}.{name}"),
                            expected: var.dims().to_vec(),
                            found: t.dims().to_vec(),
                        }
                        .into())
                    }
                    None => None,
                };
            }
        }
        Ok(())
    }

    fn state_names(&self) -> (&'static str, &'static str) {
        match self.cfg.kind {
            OptimizerKind::AdamW => ("exp_avg", "exp_avg_sq"),
            OptimizerKind::Sgd => ("momentum_buffer", "unused"),
        }
    }
}

/// The global L2 norm of the gradients of `params` (those that have one), as
/// `torch.nn.utils.clip_grad_norm_` measures it: each tensor's sum of squares
/// ([`square_sums`], read back from the device at once), added in float64 in the parameters'
/// order.
pub fn grad_norm(grads: &GradStore, params: &[(String, Var)]) -> Result<f64> {
    let present: Vec<&Tensor> = params.iter().filter_map(|(_, v)| grads.get(v.as_tensor())).collect();
    Ok(square_sums(&present)?.into_iter().fold(0f64, |total, s| total + s).sqrt())
}

/// What `clip_grad_norm_` multiplies the gradients by at global norm `norm`:
/// `max_norm / (norm + 1e-6)` where that is under 1; none otherwise.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping. Training folds the
/// scale into the update instead ([`Optimizer::step_scaled`]).
pub fn clip_grad_norm(grads: &mut GradStore, params: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, params)?;
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        for (_, v) in params {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}
