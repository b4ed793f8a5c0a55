//! Batches for metric learning: P identities x K videos (PK sampling, as in
//! MitoReID and person re-identification), and plain sequential batches for
//! embedding and evaluation.
//!
//! PK: every identity's videos are shuffled and cut into groups of K; each
//! batch takes one group from each of P different identities, so no video
//! appears twice in a batch. An identity with fewer than K videos is filled
//! up by drawing its videos again (the one case where a video repeats
//! within a batch); leftovers smaller than K are dropped for the epoch.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// P × K batches: how many identities, and videos per identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Identities per batch.
    pub p: usize,
    /// Videos per identity per batch.
    pub k: usize,
    /// Spread each identity's K videos over its replicates (round-robin),
    /// so a batch's positives come from different experiments.
    pub balance_replicates: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { p: 8, k: 4, balance_replicates: true }
    }
}

/// PK batches over videos labelled by identity (drug or MoA) and replicate.
#[derive(Debug, Clone)]
pub struct PkSampler {
    /// Per identity, its videos grouped by replicate.
    groups: Vec<Vec<Vec<usize>>>,
    config: SamplerConfig,
    seed: u64,
}

impl PkSampler {
    /// `identity[i]` and `replicate[i]` label video `i`.
    pub fn new(identity: &[usize], replicate: &[usize], config: SamplerConfig, seed: u64) -> Result<Self, DataError> {
        if config.p == 0 || config.k == 0 {
            return Err(DataError::config(
                "sampler",
                format!("P = {}, K = {}: both must be at least 1", config.p, config.k),
            ));
        }
        let n_id = identity.iter().max().map_or(0, |m| m + 1);
        let n_rep = replicate.iter().max().map_or(0, |m| m + 1);
        let mut groups = vec![vec![Vec::new(); n_rep.max(1)]; n_id];
        for (i, (&id, &rep)) in identity.iter().zip(replicate).enumerate() {
            let rep = if config.balance_replicates { rep } else { 0 };
            groups[id][rep].push(i);
        }
        groups.retain(|g| g.iter().any(|r| !r.is_empty()));
        if groups.len() < config.p {
            return Err(DataError::config(
                "sampler.p",
                format!("{} identities, but a batch needs P = {} different ones", groups.len(), config.p),
            ));
        }
        Ok(Self { groups, config, seed })
    }

    /// The batches of one epoch, each of P x K video indices (identities in
    /// blocks of K).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x706b);
        let k = self.config.k;
        // Per identity: a queue of K-groups.
        let mut queues: Vec<Vec<Vec<usize>>> = self
            .groups
            .iter()
            .map(|by_rep| {
                let mut reps: Vec<Vec<usize>> = by_rep.iter().filter(|r| !r.is_empty()).cloned().collect();
                for r in reps.iter_mut() {
                    r.shuffle(&mut rng);
                }
                reps.shuffle(&mut rng);
                // Round-robin over replicates.
                let mut order = Vec::new();
                let longest = reps.iter().map(Vec::len).max().unwrap_or(0);
                for i in 0..longest {
                    order.extend(reps.iter().filter_map(|r| r.get(i)));
                }
                if order.len() < k {
                    let base = order.clone();
                    while order.len() < k {
                        order.push(*base.choose(&mut rng).expect("identities have videos"));
                    }
                }
                let mut chunks: Vec<Vec<usize>> = order.chunks_exact(k).map(<[usize]>::to_vec).collect();
                chunks.reverse();
                chunks
            })
            .collect();
        let mut batches = Vec::new();
        loop {
            let mut available: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
            if available.len() < self.config.p {
                break;
            }
            available.shuffle(&mut rng);
            let mut batch = Vec::with_capacity(self.config.p * k);
            for &id in &available[..self.config.p] {
                batch.extend(queues[id].pop().expect("available"));
            }
            batches.push(batch);
        }
        batches
    }
}

/// Consecutive batches of `batch` indices over `n` videos, in order (the
/// last one may be shorter).
pub fn sequential_batches(n: usize, batch: usize) -> Vec<Vec<usize>> {
    (0..n).step_by(batch.max(1)).map(|s| (s..(s + batch.max(1)).min(n)).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn labels() -> (Vec<usize>, Vec<usize>) {
        // 10 identities x 3 replicates x 4 videos, one identity with only 2 videos.
        let mut id = Vec::new();
        let mut rep = Vec::new();
        for i in 0..10 {
            let n = if i == 9 { 2 } else { 12 };
            for v in 0..n {
                id.push(i);
                rep.push(v % 3);
            }
        }
        (id, rep)
    }

    #[test]
    fn batches_are_p_by_k_with_distinct_identities_and_videos() {
        let (id, rep) = labels();
        let s = PkSampler::new(&id, &rep, SamplerConfig { p: 4, k: 4, balance_replicates: true }, 7).unwrap();
        let batches = s.epoch(0);
        assert!(!batches.is_empty());
        let mut seen = BTreeMap::new();
        for b in &batches {
            assert_eq!(b.len(), 16);
            let ids: Vec<usize> = b.chunks(4).map(|c| id[c[0]]).collect();
            assert!(b.chunks(4).all(|c| c.iter().all(|&v| id[v] == id[c[0]])));
            assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 4, "{ids:?}");
            // No repeats, except the identity with 2 videos filled up to K.
            let distinct: BTreeSet<usize> = b.iter().copied().collect();
            let small = ids.contains(&9) as usize;
            assert_eq!(distinct.len(), 16 - 2 * small);
            // Balanced: a big identity's K videos cover all 3 replicates.
            for c in b.chunks(4).filter(|c| id[c[0]] != 9) {
                assert_eq!(c.iter().map(|&v| rep[v]).collect::<BTreeSet<_>>().len(), 3);
            }
            for &v in b {
                *seen.entry(v).or_insert(0) += 1;
            }
        }
        // Each video at most once per epoch (the small identity aside).
        assert!(seen.iter().all(|(&v, &n)| n == 1 || id[v] == 9));
    }

    #[test]
    fn epochs_are_seeded() {
        let (id, rep) = labels();
        let s = PkSampler::new(&id, &rep, SamplerConfig::default(), 3).unwrap();
        assert_eq!(s.epoch(1), s.epoch(1));
        assert_ne!(s.epoch(1), s.epoch(2));
        let other = PkSampler::new(&id, &rep, SamplerConfig::default(), 4).unwrap();
        assert_ne!(s.epoch(1), other.epoch(1));
    }

    #[test]
    fn too_few_identities_is_an_error() {
        let e = PkSampler::new(&[0, 0, 1], &[0, 1, 0], SamplerConfig { p: 3, k: 2, balance_replicates: false }, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 identities") && e.contains("P = 3"), "{e}");
    }

    #[test]
    fn sequential_batches_cover_everything_in_order() {
        assert_eq!(sequential_batches(5, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(sequential_batches(0, 4).is_empty());
    }
}
