//! How much arithmetic a step does, and how much a GPU could: the floating-point operations
//! of a forward pass's products (3D convolutions, linear layers, matrix products, attention),
//! counted as they run, and a CUDA device's theoretical dense peak, so that a benchmark can
//! say what share of the GPU's peak a training step reaches.

use std::cell::Cell;

thread_local! {
    static COUNTED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Restores the count around [`count_flops`] when `f` returns or unwinds.
struct Counting {
    outer: Option<u64>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        COUNTED.with(|c| {
            let inner = c.get().unwrap_or(0);
            c.set(self.outer.map(|o| o + inner));
        });
    }
}

/// `f()`, with the floating-point operations of the products it ran on this thread (two per
/// multiply-add; element-wise work, norms, softmax and the backward pass are not counted).
/// A count inside another adds to the outer one too. A training step is usually taken as
/// three times its forward pass's products (forward, input gradient, weight gradient).
pub fn count_flops<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let counting = Counting { outer: COUNTED.with(|c| c.replace(Some(0))) };
    let r = f();
    let n = COUNTED.with(|c| c.get()).unwrap_or(0);
    drop(counting);
    (r, n)
}

/// Adds `multiply_adds` (two operations each) to the count, when one is running.
pub(crate) fn add_multiply_adds(multiply_adds: usize) {
    COUNTED.with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 2 * multiply_adds as u64));
        }
    });
}

/// A GPU's theoretical dense peak, in floating-point operations per second, at its highest SM
/// clock: SMs × clock × what one SM does per clock for its architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    /// The device's name, as the driver gives it.
    pub name: String,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// The highest SM clock, MHz.
    pub clock_mhz: u32,
    /// Float32 on the FMA units.
    pub f32: f64,
    /// TF32 on the tensor cores, float32 sums.
    pub tf32: f64,
    /// bf16 on the tensor cores, float32 sums.
    pub bf16: f64,
}

impl Peak {
    /// From the compute capability, SM count and clock; `None` for architectures this table
    /// does not know (before Ampere's tensor cores, or newer than Hopper).
    pub fn from_architecture(name: &str, (major, minor): (i32, i32), sms: u32, clock_mhz: u32) -> Option<Self> {
        // Dense operations per SM per clock, (FP32, TF32, bf16), from NVIDIA's architecture
        // whitepapers: A100 (8.0); GA10x and AD10x (8.6, 8.7, 8.9: half the tensor rate of
        // 8.0 per SM, twice its FP32); H100 and H200 (9.0).
        let [f32, tf32, bf16] = match (major, minor) {
            (8, 0) => [128.0, 1024.0, 2048.0],
            (8, 6 | 7 | 9) => [256.0, 512.0, 1024.0],
            (9, 0) => [256.0, 2048.0, 4096.0],
            _ => return None,
        };
        let per_clock = sms as f64 * clock_mhz as f64 * 1e6;
        Some(Self {
            name: name.to_string(),
            sms,
            clock_mhz,
            f32: f32 * per_clock,
            tf32: tf32 * per_clock,
            bf16: bf16 * per_clock,
        })
    }

    /// The device's peak, for a CUDA device whose architecture the table knows; `None` on
    /// the CPU, in a build without CUDA, or when the driver does not answer.
    pub fn of(device: &candle_core::Device) -> Option<Self> {
        #[cfg(feature = "cuda")]
        if let Ok(dev) = device.as_cuda_device() {
            use candle_core::cuda::cudarc::driver::sys::CUdevice_attribute as A;
            let ctx = dev.cuda_stream().context().clone();
            let sms = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).ok()?;
            let khz = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE).ok()?;
            let name = ctx.name().ok()?;
            let cc = ctx.compute_capability().ok()?;
            return Self::from_architecture(&name, cc, u32::try_from(sms).ok()?, u32::try_from(khz / 1000).ok()?);
        }
        let _ = device;
        None
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::{attention_of_first, conv3d, matmul_t, Linear, Window3d};

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn products_are_counted_by_hand() {
        // conv3d: B 2, C 3 → O 4, 5 x 6 x 7 input, 3 x 3 x 3 kernel, stride (1, 2, 2), padding
        // 1: output 5 x 3 x 4, each output 3 x 27 multiply-adds.
        let window = Window3d::new([3, 3, 3], [1, 2, 2], [1, 1, 1]);
        let (y, n) = count_flops(|| conv3d(&zeros(&[2, 3, 5, 6, 7]), &zeros(&[4, 3, 3, 3, 3]), window).unwrap());
        assert_eq!(y.dims(), [2, 4, 5, 3, 4]);
        assert_eq!(n, 2 * (2 * 4 * 5 * 3 * 4) * (3 * 27));
        // Linear 6 → 5 over 2 x 7 rows, with and without bias; a · bᵀ of 3 x 6 by 4 x 6.
        let with_bias = Linear::from_tensors(zeros(&[5, 6]), Some(zeros(&[5])));
        let without = Linear::from_tensors(zeros(&[5, 6]), None);
        let x = zeros(&[2, 7, 6]);
        let (_, n) = count_flops(|| {
            with_bias.forward(&x).unwrap();
            without.forward(&x).unwrap();
            matmul_t(&zeros(&[3, 6]), &zeros(&[4, 6])).unwrap()
        });
        assert_eq!(n, 2 * (2 * 14 * 6 * 5) + 2 * 3 * 4 * 6);
        // Attention of the first 2 of 5 tokens, 2 heads of 3: scores 2 x 5 x 3 and the weighted
        // sum 2 x 5 x 3 per head and video.
        let (_, n) = count_flops(|| attention_of_first(&zeros(&[4, 5, 18]), 2, 2).unwrap());
        assert_eq!(n, 2 * 4 * 2 * (2 * 5 * 3 + 2 * 5 * 3));
    }

    #[test]
    fn counts_nest_and_nothing_is_counted_outside() {
        let lin = Linear::from_tensors(zeros(&[5, 6]), None);
        let x = zeros(&[1, 6]);
        lin.forward(&x).unwrap();
        let ((_, inner), outer) = count_flops(|| {
            lin.forward(&x).unwrap();
            count_flops(|| lin.forward(&x).unwrap())
        });
        assert_eq!((inner, outer), (60, 120));
        // A count that unwinds leaves none running.
        let unwound = std::panic::catch_unwind(|| count_flops(|| panic!("inside")));
        assert!(unwound.is_err());
        assert_eq!(COUNTED.with(|c| c.get()), None);
    }

    #[test]
    fn peaks_match_the_datasheets() {
        // H100 SXM: 132 SMs; FP32 66.9 TFLOP/s at 1,980 MHz (NVIDIA's datasheet), and the
        // tensor rates at the same clock (the datasheet's 989 dense bf16 is at 1,830 MHz).
        let h100 = Peak::from_architecture("H100", (9, 0), 132, 1980).unwrap();
        assert!((h100.f32 / 1e12 - 66.9).abs() < 0.1, "{}", h100.f32);
        assert!((Peak::from_architecture("H100", (9, 0), 132, 1830).unwrap().bf16 / 1e12 - 989.4).abs() < 0.5);
        // A100 SXM: 108 SMs at 1,410 MHz: 19.5 FP32, 156 TF32, 312 bf16.
        let a100 = Peak::from_architecture("A100", (8, 0), 108, 1410).unwrap();
        for (got, sheet) in [(a100.f32, 19.5), (a100.tf32, 156.0), (a100.bf16, 312.0)] {
            assert!((got / 1e12 - sheet).abs() / sheet < 0.01, "{got} against {sheet}");
        }
        assert_eq!(Peak::from_architecture("V100", (7, 0), 80, 1530), None);
        assert_eq!(Peak::of(&Device::Cpu), None);
    }
}
