//! The microscope between the cell and the file: point-spread function,
//! photobleaching, replicate batch effects, Poisson-Gaussian noise, bit depth.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};

use crate::config::ImagingConfig;

/// Batch effects of one replicate experiment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replicate {
    /// Detector gain.
    pub gain: f64,
    /// Background level.
    pub background: f64,
    /// Photons at full intensity (shot noise).
    pub photons: f64,
    /// Read noise, in grey levels.
    pub read_noise: f64,
    /// Multiplies the PSF sigma (focus and optics differ between days).
    pub blur: f64,
    /// Shifts every program in time (drug added a little earlier or later).
    pub time_offset: f64,
}

impl Replicate {
    /// One replicate's microscope settings, drawn around `config`.
    pub fn draw(config: &ImagingConfig, seed: u64, replicate: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_706c ^ ((replicate as u64 + 1) << 40));
        let range = |rng: &mut ChaCha8Rng, r: [f64; 2]| if r[1] > r[0] { rng.random_range(r[0]..r[1]) } else { r[0] };
        let normal = |rng: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(rng) };
        Self {
            gain: (config.replicate_gain_spread * normal(&mut rng)).exp(),
            background: range(&mut rng, config.background),
            photons: range(&mut rng, config.photons),
            read_noise: range(&mut rng, config.read_noise),
            blur: rng.random_range(0.85..1.2),
            time_offset: 0.04 * normal(&mut rng),
        }
    }
}

/// Separable Gaussian blur in place (edges clamp).
pub fn gaussian_blur(image: &mut [f32], size: usize, sigma: f64) {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = {
        let k: Vec<f64> = (-radius..=radius).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp()).collect();
        let total: f64 = k.iter().sum();
        k.iter().map(|v| (v / total) as f32).collect()
    };
    let n = size as isize;
    let mut tmp = vec![0.0f32; image.len()];
    for y in 0..n {
        let row = &image[(y * n) as usize..((y + 1) * n) as usize];
        for x in 0..n {
            let mut acc = 0.0;
            for (j, w) in kernel.iter().enumerate() {
                let xx = (x + j as isize - radius).clamp(0, n - 1);
                acc += w * row[xx as usize];
            }
            tmp[(y * n + x) as usize] = acc;
        }
    }
    for y in 0..n {
        for x in 0..n {
            let mut acc = 0.0;
            for (j, w) in kernel.iter().enumerate() {
                let yy = (y + j as isize - radius).clamp(0, n - 1);
                acc += w * tmp[(yy * n + x) as usize];
            }
            image[(y * n + x) as usize] = acc;
        }
    }
}

/// Turn an optical image (arbitrary units) into a camera frame in [0, 1]:
/// gain and bleaching, background, shot noise, read noise, saturation.
pub fn expose(image: &mut [f32], replicate: &Replicate, cell_gain: f64, bleach: f64, rng: &mut ChaCha8Rng) {
    let scale = replicate.gain * cell_gain * bleach;
    let photons = replicate.photons;
    for v in image.iter_mut() {
        let signal = (*v as f64 * scale + replicate.background).max(0.0);
        let lambda = signal * photons;
        let counts = if lambda < 30.0 {
            if lambda <= 0.0 {
                0.0
            } else {
                Poisson::new(lambda).map(|p| p.sample(rng)).unwrap_or(lambda)
            }
        } else {
            let z: f64 = StandardNormal.sample(rng);
            lambda + lambda.sqrt() * z
        };
        let read: f64 = StandardNormal.sample(rng);
        *v = (counts / photons + replicate.read_noise * read).clamp(0.0, 1.0) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_mass_away_from_edges() {
        let mut img = vec![0.0f32; 32 * 32];
        img[16 * 32 + 16] = 1.0;
        gaussian_blur(&mut img, 32, 1.5);
        let total: f32 = img.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        assert!(img[16 * 32 + 16] < 0.1 && img[16 * 32 + 17] > 0.05);
    }

    #[test]
    fn exposure_saturates_and_adds_noise_around_the_mean() {
        let rep =
            Replicate { gain: 1.0, background: 0.1, photons: 200.0, read_noise: 0.01, blur: 1.0, time_offset: 0.0 };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut img = vec![0.3f32; 10_000];
        img[0] = 50.0;
        expose(&mut img, &rep, 1.0, 1.0, &mut rng);
        assert_eq!(img[0], 1.0);
        let mean: f32 = img[1..].iter().sum::<f32>() / 9999.0;
        assert!((mean - 0.4).abs() < 0.01, "{mean}");
        let var: f32 = img[1..].iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 9999.0;
        // Poisson: 0.4 / 200 = 0.002, plus read 1e-4.
        assert!((var - 0.0021).abs() < 0.0004, "{var}");
    }
}
