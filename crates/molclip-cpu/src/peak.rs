//! The cores' float32 FMA peak, measured: what a benchmark's arithmetic rate is a share of.

use crate::Isa;

/// Independent FMA chains per thread: more than the two FMA units' latency times their
/// count (4 cycles x 2), so that the units never wait for a result.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 12;

/// The float32 operations per second that every thread of the current rayon pool reaches
/// together, each running independent FMA chains at `level` (the best of three runs of about
/// 10 ms): the cores' peak at the clock they hold under that load, which turbo makes higher
/// than the nominal one. `None` below AVX2 (and off x86-64), where molclip states no peak.
pub fn fma_peak(level: Isa) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let level = level.min(Isa::detected());
        if level < Isa::Avx2 {
            return None;
        }
        let (lanes, iterations) = (if level == Isa::Avx512 { 16 } else { 8 }, 6_000_000);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
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

    /// Twice the lanes, at most twice the rate per thread (AVX-512 on a CPU with two FMA
    /// units of 512 bits, less where it has one, or lowers its clock); and the rate is a
    /// rate: between 1 and 64 FMAs of 8 lanes per nanosecond per thread, for any CPU of
    /// this century.
    #[test]
    fn peaks_are_rates_of_their_width() {
        let threads = rayon::current_num_threads() as f64;
        let Some(avx2) = fma_peak(Isa::Avx2) else {
            assert!(Isa::detected() < Isa::Avx2);
            return;
        };
        let per_thread = avx2 / threads;
        assert!((16e9..=1024e9).contains(&per_thread), "{per_thread}");
        if Isa::detected() == Isa::Avx512 {
            let avx512 = fma_peak(Isa::Avx512).unwrap();
            assert!(avx512 < 2.3 * avx2, "{avx512} against {avx2}");
        }
        assert_eq!(fma_peak(Isa::Scalar), None);
    }
}
