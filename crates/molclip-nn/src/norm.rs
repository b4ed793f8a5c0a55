//! The sums of squares a global gradient norm is made of (gradient clipping), with one wait for
//! the device however many tensors: each tensor's sum is queued, then all are read back at
//! once. On a GPU, reading each tensor's sum apart costs a round trip per tensor (164 for
//! an I3D-ResNet-50), each one idling the GPU. On a CUDA device with molclip's kernels (feature
//! `cuda`) the float32 tensors go through two launches per 64 tensors instead of three each.

use candle_core::{DType, Device, DeviceLocation, Tensor};

use crate::Result;

/// Elements per lane of the `square_lanes` kernel, and its most lanes per tensor.
const PER_LANE: usize = 256;
const MAX_LANES: usize = 4096;

/// How many lanes of the `square_lanes` kernel (kernels.cu) sum a tensor of `len` values:
/// one per [`PER_LANE`] values, between 1 and [`MAX_LANES`]. The order of the tensor's sum
/// follows from it alone: lane `k` of `L` adds the squares of values `k`, `k + L`, ... in
/// turn, and the lanes are added in order, all in float64.
pub fn square_lanes(len: usize) -> usize {
    len.div_ceil(PER_LANE).clamp(1, MAX_LANES)
}

/// Each tensor's sum of squares, in float64, read back to the host at once. Float32
/// contiguous tensors on a CUDA device with molclip's kernels go through them (float64 sums in
/// the order [`square_lanes`] sets); the others are `x.sqr().sum_all()` in their own type,
/// then float64, queued on their device and read back together, one read per device.
pub fn square_sums(tensors: &[&Tensor]) -> Result<Vec<f64>> {
    let mut sums = vec![0f64; tensors.len()];
    let mut composed: Vec<(DeviceLocation, Device, Vec<usize>)> = Vec::new();
    #[cfg(feature = "cuda")]
    let mut on_kernels = Vec::new();
    for (k, t) in tensors.iter().enumerate() {
        #[cfg(feature = "cuda")]
        if t.dtype() == DType::F32 && t.is_contiguous() && crate::update::on_cuda_with_kernels(t) {
            on_kernels.push(k);
            continue;
        }
        let location = t.device().location();
        match composed.iter_mut().find(|(l, _, _)| *l == location) {
            Some((_, _, ks)) => ks.push(k),
            None => composed.push((location, t.device().clone(), vec![k])),
        }
    }
    for (_, _, ks) in &composed {
        let parts = ks
            .iter()
            .map(|&k| Ok(tensors[k].sqr()?.sum_all()?.to_dtype(DType::F64)?))
            .collect::<Result<Vec<Tensor>>>()?;
        for (&k, s) in ks.iter().zip(Tensor::stack(&parts, 0)?.to_vec1::<f64>()?) {
            sums[k] = s;
        }
    }
    #[cfg(feature = "cuda")]
    if !on_kernels.is_empty() {
        let chosen: Vec<&Tensor> = on_kernels.iter().map(|&k| tensors[k]).collect();
        for (&k, s) in on_kernels.iter().zip(crate::kernels::square_sums(&chosen)?) {
            sums[k] = s;
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's sums are each tensor's `sqr().sum_all()` in float32, then float64, as reading
    /// them one by one gives, whatever the grouping; the lanes cover every length.
    #[test]
    fn sums_are_each_tensors_own() {
        let cpu = Device::Cpu;
        let tensors: Vec<Tensor> = [0usize, 1, 7, 1000, 70_001]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let v: Vec<f32> = (0..n).map(|i| ((i * 37 + k * 11) % 101) as f32 / 50.0 - 1.0).collect();
                Tensor::from_vec(v, n, &cpu).unwrap()
            })
            .chain([Tensor::new(&[[3f64, -4.0]], &cpu).unwrap()])
            .collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let sums = square_sums(&refs).unwrap();
        for (t, s) in tensors.iter().zip(&sums) {
            let one = t.sqr().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert_eq!(s.to_bits(), one.to_bits());
        }
        assert_eq!(sums[0], 0.0);
        assert_eq!(sums[5], 25.0);
        assert!(square_sums(&[]).unwrap().is_empty());
        assert_eq!([0, 1, 256, 257, 1 << 20, 1 << 30].map(square_lanes), [1, 1, 1, 2, 4096, 4096]);
    }
}
