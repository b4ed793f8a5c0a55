//! Optimiser updates in place: AdamW's moments and parameter step, each one pass over its
//! tensor, with the same float32 operations in the same order as the update composed of candle
//! ops, so that on the CPU both give the same bits. On CUDA devices (feature `cuda`) one
//! kernel, compiled once by NVRTC, updates up to 64 tensors per launch, all three passes in
//! one: two or three launches for a whole I3D step instead of the composed update's twelve per
//! tensor.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, f32_slice_mut};
use crate::fused::on_cpu_f32;
use crate::Result;

/// One AdamW step's constants, in float64 as the optimiser holds them.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// The first moment's decay rate.
    pub beta1: f64,
    /// The second moment's decay rate.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// The learning rate.
    pub lr: f64,
    /// Decoupled weight decay (the parameter shrinks by `lr · weight_decay`).
    pub weight_decay: f64,
    /// The step's number, from 1 (bias correction).
    pub step: i32,
    /// What the gradients are multiplied by first: gradient clipping's coefficient, 1 without.
    pub grad_scale: f64,
}

impl AdamWStep {
    /// `m = β1·m + (1 − β1)·g`, `v = β2·v + (1 − β2)·g²` and
    /// `p = (1 − lr·wd)·p − lr/bc1 · m / (√v / √bc2 + eps)` (`bc = 1 − β^step`) from candle
    /// ops, `g` the gradient times `grad_scale` (unless 1), the moments starting from zero:
    /// what runs off the CPU, and the reference of [`adamw_in_place`]. Returns the new
    /// parameter and moments.
    pub fn composed(
        &self,
        p: &Tensor,
        g: &Tensor,
        m: Option<Tensor>,
        v: Option<Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let scaled;
        let g = if self.grad_scale == 1.0 {
            g
        } else {
            scaled = (g * self.grad_scale)?;
            &scaled
        };
        let m = match m {
            Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
            None => (g * (1.0 - self.beta1))?,
        };
        let v = match v {
            Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
            None => (g.sqr()? * (1.0 - self.beta2))?,
        };
        let (bc1, bc2) = self.bias_corrections();
        let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
        let decayed = (p * (1.0 - self.lr * self.weight_decay))?;
        let update = ((&m / denom)? * (self.lr / bc1))?;
        Ok(((decayed - update)?, m, v))
    }

    fn bias_corrections(&self) -> (f64, f64) {
        (1.0 - self.beta1.powi(self.step), 1.0 - self.beta2.powi(self.step))
    }
}

/// One parameter's tensors for [`adamw_in_place_all`]: the parameter, its gradient and its
/// two moments.
#[derive(Clone, Copy, Debug)]
pub struct AdamWSlot<'a> {
    /// The parameter, updated in place.
    pub param: &'a Tensor,
    /// Its gradient.
    pub grad: &'a Tensor,
    /// The first moment (`exp_avg`), updated in place.
    pub m: &'a Tensor,
    /// The second moment (`exp_avg_sq`), updated in place.
    pub v: &'a Tensor,
}

impl AdamWSlot<'_> {
    /// Whether the update can be done in place: float32, contiguous, of the parameter's
    /// shape, on the CPU or on a CUDA device with molclip's kernels.
    fn in_place(&self) -> bool {
        let all = [self.param, self.grad, self.m, self.v];
        let here = |t: &Tensor| on_cpu_f32(t) || (t.dtype() == DType::F32 && on_cuda_with_kernels(t));
        all.iter().all(|t| here(t) && t.is_contiguous() && t.shape() == self.param.shape())
    }
}

/// The step's constants in float32, as the passes (and the CUDA kernel's `AdamWConstants`)
/// take them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdamWConstants {
    /// β1, what the first moment keeps.
    pub keep1: f32,
    /// 1 − β1, what it takes of the gradient.
    pub take1: f32,
    /// β2.
    pub keep2: f32,
    /// 1 − β2, what the second moment takes of the squared gradient.
    pub take2: f32,
    /// 1 / √(1 − β2^step).
    pub unbias: f32,
    /// eps.
    pub eps: f32,
    /// 1 − lr · weight decay.
    pub decay: f32,
    /// lr / (1 − β1^step).
    pub rate: f32,
    /// The gradients' scale.
    pub scale: f32,
}

impl AdamWConstants {
    /// `step`'s constants, each rounded to float32 from its float64 value.
    pub fn of(step: &AdamWStep) -> Self {
        let (b1, b2) = (step.beta1, step.beta2);
        let (bc1, bc2) = step.bias_corrections();
        Self {
            keep1: b1 as f32,
            take1: (1.0 - b1) as f32,
            keep2: b2 as f32,
            take2: (1.0 - b2) as f32,
            unbias: (1.0 / bc2.sqrt()) as f32,
            eps: step.eps as f32,
            decay: (1.0 - step.lr * step.weight_decay) as f32,
            rate: (step.lr / bc1) as f32,
            scale: step.grad_scale as f32,
        }
    }
}

/// [`AdamWStep::composed`] in place, on float32 tensors (CPU, or CUDA with the `cuda` feature): the moments `m` and `v` (zeros
/// for a first step) are updated from the gradient `g`, then the parameter `p` from them, one
/// pass each. Returns false, touching nothing, where a tensor is elsewhere, of another type or
/// not contiguous: the caller composes the step then.
///
/// Every constant is rounded to float32 and every operation done as candle does it (an
/// affine map is `x · mul + add`, its `+ 0` included, which turns −0 into +0), so the bits
/// are [`AdamWStep::composed`]'s; a test checks it.
pub fn adamw_in_place(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, step: &AdamWStep) -> Result<bool> {
    Ok(adamw_in_place_all(&[AdamWSlot { param: p, grad: g, m, v }], step)?[0])
}

/// [`adamw_in_place`] for many parameters at once, the same bits: whether each slot was
/// updated (those that were not are left alone, for the caller to compose). On a CUDA device
/// the slots go to the kernel 64 at a time, one launch each.
pub fn adamw_in_place_all(slots: &[AdamWSlot<'_>], step: &AdamWStep) -> Result<Vec<bool>> {
    let done: Vec<bool> = slots.iter().map(AdamWSlot::in_place).collect();
    let c = AdamWConstants::of(step);
    // The CPU's three passes, one tensor at a time.
    let first = Moment { keep: c.keep1, take: c.take1, scale: c.scale, square: false };
    let second = Moment { keep: c.keep2, take: c.take2, scale: c.scale, square: true };
    let param = ParamStep { unbias: c.unbias, eps: c.eps, decay: c.decay, rate: c.rate };
    #[cfg(feature = "cuda")]
    let mut on_cuda: Vec<AdamWSlot<'_>> = Vec::new();
    for (slot, _) in slots.iter().zip(&done).filter(|(_, &d)| d) {
        match slot.param.device() {
            #[cfg(feature = "cuda")]
            candle_core::Device::Cuda(_) => on_cuda.push(*slot),
            _ => {
                slot.m.inplace_op2(slot.grad, &first)?;
                slot.v.inplace_op2(slot.grad, &second)?;
                slot.param.inplace_op3(slot.m, slot.v, &param)?;
            }
        }
    }
    #[cfg(feature = "cuda")]
    crate::kernels::adamw(&on_cuda, &c)?;
    Ok(done)
}

/// Whether `t` is on a CUDA device on which molclip's kernels compiled and loaded.
pub(crate) fn on_cuda_with_kernels(t: &Tensor) -> bool {
    match t.device() {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => crate::kernels::ready(dev),
        _ => false,
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// A moment's update from the gradient: `x = (x·keep + 0) + (g·take + 0)`, `g²` for `g` with
/// `square`, where `g` is the gradient times `scale`, plus 0 (candle's affine map, as
/// clipping's `g * coefficient` is; with a scale of 1 the moments' bits are the unscaled
/// gradient's, −0 turning into +0 changing neither).
struct Moment {
    keep: f32,
    take: f32,
    scale: f32,
    square: bool,
}

/// One task's values of a [`Moment`] update.
struct MomentChunk<'a>(&'a Moment, &'a mut [f32], &'a [f32]);

impl molclip_cpu::Vectorized for MomentChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let MomentChunk(Moment { keep, take, scale, square }, x, g) = self;
        let g = &g[..x.len()];
        // Indexed loops, as in `map_par`; `+ 0.0` as candle's affine map adds it.
        #[allow(clippy::needless_range_loop)]
        if *square {
            for i in 0..x.len() {
                let g = g[i] * scale + 0.0;
                x[i] = (x[i] * keep + 0.0) + ((g * g) * take + 0.0);
            }
        } else {
            for i in 0..x.len() {
                let g = g[i] * scale + 0.0;
                x[i] = (x[i] * keep + 0.0) + (g * take + 0.0);
            }
        }
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (x, g) = (f32_slice_mut(s1, l1)?, f32_slice(s2, l2)?);
        let isa = molclip_cpu::isa();
        x.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(x, g)| molclip_cpu::vectorize(isa, MomentChunk(self, x, g)));
        Ok(())
    }
}

/// The parameter's step from its moments:
/// `p = (p·decay + 0) − ((m / ((√v·unbias + 0)·1 + eps))·rate + 0)`.
struct ParamStep {
    unbias: f32,
    eps: f32,
    decay: f32,
    rate: f32,
}

/// One task's values of a [`ParamStep`].
struct ParamChunk<'a>(&'a ParamStep, &'a mut [f32], &'a [f32], &'a [f32]);

impl molclip_cpu::Vectorized for ParamChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let ParamChunk(ParamStep { unbias, eps, decay, rate }, p, m, v) = self;
        let (m, v) = (&m[..p.len()], &v[..p.len()]);
        #[allow(clippy::needless_range_loop)]
        for i in 0..p.len() {
            let denom = (v[i].sqrt() * unbias + 0.0) * 1.0 + eps;
            p[i] = (p[i] * decay + 0.0) - ((m[i] / denom) * rate + 0.0);
        }
    }
}

impl InplaceOp3 for ParamStep {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (p, m, v) = (f32_slice_mut(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let isa = molclip_cpu::isa();
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(p, (m, v))| {
            molclip_cpu::vectorize(isa, ParamChunk(self, p, m, v));
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u64, scale: f32) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        // Signed zeros and tiny values, where a dropped `+ 0` or a contracted FMA would show.
        v[0] = -0.0;
        v[1] = 0.0;
        v[2] = 1e-30;
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    /// Three steps from zero moments (the first from none, in the composed update), with and
    /// without weight decay and a gradient scale, over more than one parallel chunk: the
    /// parameter and both moments have the composed update's bits.
    #[test]
    fn in_place_adamw_gives_the_composed_bits() {
        let n = 3 * CHUNK + 5;
        for (weight_decay, grad_scale) in [(0.0, 1.0), (0.05, 1.0), (0.05, 0.37)] {
            let start = values(n, 1, 2.0);
            let var = Var::from_tensor(&start).unwrap();
            let (mut p, mut m, mut v) = (start.copy().unwrap(), None, None);
            let (fm, fv) = (start.zeros_like().unwrap(), start.zeros_like().unwrap());
            for step in 1..=3 {
                let g = values(n, 10 + step as u64, 0.5);
                let hyper = AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, lr: 3e-4, weight_decay, step, grad_scale };
                (p, m, v) = {
                    let (p, m, v) = hyper.composed(&p, &g, m, v).unwrap();
                    (p, Some(m), Some(v))
                };
                assert!(adamw_in_place(var.as_tensor(), &g, &fm, &fv, &hyper).unwrap());
                assert_eq!(bits(var.as_tensor()), bits(&p), "parameter, step {step}");
                assert_eq!(bits(&fm), bits(m.as_ref().unwrap()), "first moment, step {step}");
                assert_eq!(bits(&fv), bits(v.as_ref().unwrap()), "second moment, step {step}");
            }
            assert_ne!(bits(&start), bits(&p), "the parameter moved");
        }
    }

    #[test]
    fn tensors_it_cannot_update_in_place_are_left_alone() {
        let p = values(8, 1, 1.0);
        let g = values(8, 2, 1.0).to_dtype(candle_core::DType::F64).unwrap();
        let (m, v) = (p.zeros_like().unwrap(), p.zeros_like().unwrap());
        let hyper =
            AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, lr: 1e-3, weight_decay: 0.0, step: 1, grad_scale: 1.0 };
        let before = bits(&p);
        assert!(!adamw_in_place(&p, &g, &m, &v, &hyper).unwrap());
        assert_eq!(bits(&p), before);
    }
}
