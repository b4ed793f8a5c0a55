//! The cores' float32 FMA peak, measured: what a benchmark's arithmetic rate is a share of.

use crate::Isa;

/// Independent FMA chains per thread: more than the two FMA units' latency times their
/// count (4 cycles x 2), so that the units never wait for a result.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 12;

/// The float32 operations per second that every thread of the current rayon pool reaches
/// together, each running independent FMA chains at `level` (the best of five runs of about
/// 10 ms, since a thread that shares its core during a run, or a virtual machine's stolen
/// time, lowers that run's rate): the cores' peak at the clock they hold under that load, which
/// turbo makes higher than the nominal one. `None` below AVX2 (and off x86-64), where
/// molclip states no peak.
pub fn fma_peak(level: Isa) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let level = level.min(Isa::detected());
        if level < Isa::Avx2 {
            return None;
        }
        let (lanes, iterations) = (if level == Isa::Avx512 { 16 } else { 8 }, 6_000_000);
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            rayon::broadcast(|_| {
                // SAFETY: `level` is at most what the CPU has (Isa::detected() found the
                // features each function enables).
                let sum = unsafe {
                    if level == Isa::Avx512 {
                        x86::chains_avx512(iterations)
                    } else {
                        x86::chains_avx2(iterations)
                    }
                };
                std::hint::black_box(sum);
            });
            best = best.min(start.elapsed().as_secs_f64());
        }
        let flops = rayon::current_num_threads() * iterations * CHAINS * lanes * 2;
        return Some(flops as f64 / best);
    }
    #[allow(unreachable_code)]
    {
        let _ = level;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// `iterations` rounds of [`CHAINS`] FMAs of 8 lanes, each chain x ← x · b + c (which
    /// settles near 0.1: no overflow, no subnormals); returns a sum of the chains.
    ///
    /// # Safety
    ///
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains_avx2(iterations: usize) -> f32 {
        let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut x = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for v in x.iter_mut() {
                *v = _mm256_fmadd_ps(*v, b, c);
            }
        }
        x.iter().map(|v| _mm256_cvtss_f32(*v)).sum()
    }

    /// As [`chains_avx2`], 16 lanes.
    ///
    /// # Safety
    ///
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains_avx512(iterations: usize) -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut x = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for v in x.iter_mut() {
                *v = _mm512_fmadd_ps(*v, b, c);
            }
        }
        x.iter().map(|v| _mm512_cvtss_f32(*v)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each chain runs exactly `iterations` FMAs (what the rate credits it with): its value
    /// is the scalar recurrence x <- fma(x, b, c) taken that many times, bit for bit, and one
    /// iteration more or less would move it by several ulps. The rate itself is timing, left
    /// to `bench model`; here it need only be one, and none below AVX2.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn chains_run_the_fmas_the_rate_counts() {
        let scalar = |iterations: usize| {
            let mut x = 1.0f32;
            for _ in 0..iterations {
                x = x.mul_add(0.999_999, 1e-7);
            }
            [x; CHAINS].iter().sum::<f32>()
        };
        assert_ne!(scalar(1000), scalar(999));
        for iterations in [0, 1, 999, 1000] {
            if Isa::detected() >= Isa::Avx2 {
                // SAFETY: the CPU has AVX2 and FMA (Isa::detected() checked both).
                assert_eq!(unsafe { x86::chains_avx2(iterations) }, scalar(iterations));
            }
            if Isa::detected() >= Isa::Avx512 {
                // SAFETY: the CPU has AVX-512F.
                assert_eq!(unsafe { x86::chains_avx512(iterations) }, scalar(iterations));
            }
        }
        if let Some(rate) = fma_peak(Isa::Avx2) {
            assert!(rate.is_finite() && rate > 0.0, "{rate}");
        } else {
            assert!(Isa::detected() < Isa::Avx2);
        }
        assert_eq!(fma_peak(Isa::Scalar), None);
    }
}
