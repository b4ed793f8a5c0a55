//! Mixed precision (autocast, as PyTorch's): for a scope, linear layers, attention's matrix
//! products and 3D convolutions cast their inputs and weights to a lower precision, compute
//! there, and hand float32 back. Weights (the master copy), batch norm, softmax and the
//! losses stay float32, and so do the gradients the optimiser sees.

use std::cell::Cell;

use candle_core::{DType, Tensor};

use crate::error::Result;

thread_local! {
    static COMPUTE: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Autocast on this thread until dropped; the setting before it comes back then.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    previous: Option<DType>,
}

/// Autocast to `dtype` (`None` or float32: none) on this thread, until the guard is dropped.
pub fn autocast(dtype: Option<DType>) -> Autocast {
    let dtype = dtype.filter(|d| *d != DType::F32);
    Autocast { previous: COMPUTE.with(|c| c.replace(dtype)) }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        COMPUTE.with(|c| c.set(self.previous));
    }
}

/// The dtype products compute in on this thread, when autocast is on.
pub(crate) fn compute_dtype() -> Option<DType> {
    COMPUTE.with(|c| c.get())
}

/// `f(a, b)` under autocast (for float32 operands); plain `f(a, b)` otherwise. On the CPU the
/// operands are rounded to the autocast dtype and `f` runs in float32 on them (the float32
/// kernels then serve: what tensor cores do, low-precision operands and float32 sums); on
/// other devices `f` runs in that dtype and its result comes back as float32.
pub(crate) fn cast_product(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match compute_dtype() {
        Some(dtype) if a.dtype() == DType::F32 && b.dtype() == DType::F32 => {
            if a.device().is_cpu() {
                let round = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_dtype(DType::F32)?) };
                f(&round(a)?, &round(b)?)
            } else {
                Ok(f(&a.to_dtype(dtype)?, &b.to_dtype(dtype)?)?.to_dtype(DType::F32)?)
            }
        }
        _ => f(a, b),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::{attention, conv3d, Linear, Window3d};

    fn values(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product::<usize>();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The operand as bf16 holds it, in float32.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
    }

    /// Largest difference relative to the largest value of `b`.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (flat(a), flat(b));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Under autocast an op returns float32, measurably off the exact float32 op and within
    /// bf16's rounding of it; on the CPU, linear layers and convolutions give exactly the
    /// float32 op on the bf16-rounded operands. The guard's end gives the float32 op back to
    /// the bit.
    fn check(op: &dyn Fn(&Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor, on_rounded: bool) {
        let exact = op(x, w);
        let cast = {
            let _bf16 = autocast(Some(DType::BF16));
            op(x, w)
        };
        assert_eq!(cast.dtype(), DType::F32);
        let off = rel(&cast, &exact);
        assert!(off > 1e-4 && off < 2e-2, "{off}");
        if on_rounded {
            assert_eq!(flat(&cast), flat(&op(&rounded(x), &rounded(w))));
        }
        assert_eq!(flat(&op(x, w)), flat(&exact));
    }

    #[test]
    fn linear_convolution_and_attention_compute_from_bf16_under_autocast() {
        let bias = values(&[24], 3);
        let linear = |x: &Tensor, w: &Tensor| Linear::from_tensors(w.clone(), Some(bias.clone())).forward(x).unwrap();
        check(&linear, &values(&[5, 7, 40], 1), &values(&[24, 40], 2), true);
        let win = Window3d::new([3, 3, 3], [1, 2, 2], [1, 1, 1]);
        check(&|x, w| conv3d(x, w, win).unwrap(), &values(&[2, 3, 4, 9, 9], 4), &values(&[6, 3, 3, 3, 3], 5), true);
        // Attention's two products round q, k, the weights and v inside.
        let att = |x: &Tensor, w: &Tensor| attention(&x.broadcast_mul(w).unwrap(), 2).unwrap();
        check(&att, &values(&[2, 5, 24], 6), &values(&[24], 7), false);
    }

    #[test]
    fn guards_nest_and_restore_the_setting_before_them() {
        assert_eq!(compute_dtype(), None);
        let outer = autocast(Some(DType::BF16));
        {
            let _off = autocast(None);
            assert_eq!(compute_dtype(), None);
            let _f32 = autocast(Some(DType::F32));
            assert_eq!(compute_dtype(), None, "float32 is no autocast");
        }
        assert_eq!(compute_dtype(), Some(DType::BF16));
        drop(outer);
        assert_eq!(compute_dtype(), None);
    }
}
