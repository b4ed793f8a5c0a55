//! MoA prediction against a labelled reference (a run's gallery): rank MoAs by the cosine
//! similarity of a query (videos of one drug, or a molecule in the shared space) to each
//! MoA's centroid, and name the nearest reference drugs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{ExperimentError, Result};

/// Labelled unit-norm rows: what queries are compared with.
#[derive(Clone, Debug)]
pub struct Reference {
    dim: usize,
    /// Unit-norm centroid of each MoA, and of each drug (with its MoA).
    moas: Vec<(String, Vec<f32>)>,
    drugs: Vec<(String, String, Vec<f32>)>,
}

/// One MoA's score for a query: cosine similarity to the MoA's centroid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MoaScore {
    /// The MoA.
    pub moa: String,
    /// Cosine similarity of the query to its centroid.
    pub score: f64,
}

/// A reference drug near the query.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Neighbour {
    /// The drug.
    pub drug: String,
    /// Its MoA.
    pub moa: String,
    /// Cosine similarity of the query to the drug's centroid.
    pub similarity: f64,
}

/// MoAs best first, and the nearest reference drugs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// What was named (a drug folder, or a drug's name).
    pub query: String,
    /// Rows (videos, or 1 for a molecule) the query was made of.
    pub rows: usize,
    /// MoAs, best first.
    pub moas: Vec<MoaScore>,
    /// The nearest reference drugs.
    pub nearest: Vec<Neighbour>,
    /// Why the ranking may say little (a SMILES without an organic fragment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `rows` scaled to unit norm (a zero row stays zero).
pub fn normalize_rows(rows: &mut [f32], dim: usize) {
    for r in rows.chunks_mut(dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
    }
}

/// The unit-norm mean of unit-norm rows.
fn centroid(rows: &[&[f32]], dim: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; dim];
    for r in rows {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        c.iter_mut().zip(*r).for_each(|(a, b)| *a += b / n);
    }
    normalize_rows(&mut c, dim);
    c
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

impl Reference {
    /// `rows`: `[N, dim]` embeddings; `drugs` and `moas`: the label of each row.
    pub fn new(rows: &[f32], dim: usize, drugs: &[String], moas: &[String]) -> Result<Self> {
        if dim == 0 || rows.len() != drugs.len() * dim || drugs.len() != moas.len() {
            return Err(ExperimentError::Input(format!(
                "reference: {} values for {} rows of width {dim}",
                rows.len(),
                drugs.len()
            )));
        }
        if drugs.is_empty() {
            return Err(ExperimentError::Input("reference: no videos to compare with".into()));
        }
        let mut by_moa: BTreeMap<&str, Vec<&[f32]>> = BTreeMap::new();
        let mut by_drug: BTreeMap<(&str, &str), Vec<&[f32]>> = BTreeMap::new();
        for ((r, d), m) in rows.chunks(dim).zip(drugs).zip(moas) {
            by_moa.entry(m).or_default().push(r);
            by_drug.entry((d, m)).or_default().push(r);
        }
        Ok(Self {
            dim,
            moas: by_moa.into_iter().map(|(m, rs)| (m.to_string(), centroid(&rs, dim))).collect(),
            drugs: by_drug.into_iter().map(|((d, m), rs)| (d.to_string(), m.to_string(), centroid(&rs, dim))).collect(),
        })
    }

    /// Ranks MoAs for the query made of `rows` (`[n, dim]`, pooled into their centroid).
    pub fn predict(&self, query: &str, rows: &[f32], nearest: usize) -> Result<Prediction> {
        if rows.is_empty() || !rows.len().is_multiple_of(self.dim) {
            return Err(ExperimentError::Input(format!(
                "{query}: {} values are not rows of width {}",
                rows.len(),
                self.dim
            )));
        }
        let q = centroid(&rows.chunks(self.dim).collect::<Vec<_>>(), self.dim);
        let rank = |mut v: Vec<(f64, usize)>| {
            // Ties keep reference order, so the result does not depend on the sort.
            v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            v
        };
        let moas = rank(self.moas.iter().enumerate().map(|(i, (_, c))| (dot(&q, c), i)).collect());
        let drugs = rank(self.drugs.iter().enumerate().map(|(i, (_, _, c))| (dot(&q, c), i)).collect());
        Ok(Prediction {
            query: query.to_string(),
            rows: rows.len() / self.dim,
            moas: moas.into_iter().map(|(s, i)| MoaScore { moa: self.moas[i].0.clone(), score: s }).collect(),
            nearest: drugs
                .into_iter()
                .take(nearest)
                .map(|(s, i)| Neighbour { drug: self.drugs[i].0.clone(), moa: self.drugs[i].1.clone(), similarity: s })
                .collect(),
            warning: None,
        })
    }
}

/// Top-k accuracy of predictions against true MoAs, in percent, with chance (k / MoAs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZeroShot {
    /// Drugs scored.
    pub drugs: usize,
    /// MoAs to choose from.
    pub moas: usize,
    /// Top-1 accuracy (%).
    pub top1: f64,
    /// Top-3 accuracy (%).
    pub top3: f64,
    /// Top-1 by chance (%).
    pub chance_top1: f64,
    /// Top-3 by chance (%).
    pub chance_top3: f64,
}

/// Top-1 and top-3 accuracy of `predictions` against the true MoAs, with chance.
pub fn zero_shot_accuracy(predictions: &[Prediction], truth: &[String]) -> Result<ZeroShot> {
    if predictions.is_empty() || predictions.len() != truth.len() {
        return Err(ExperimentError::Input(format!(
            "zero-shot: {} predictions for {} drugs",
            predictions.len(),
            truth.len()
        )));
    }
    let moas = predictions[0].moas.len();
    let hit = |k: usize| {
        let n = predictions.iter().zip(truth).filter(|(p, t)| p.moas.iter().take(k).any(|m| &m.moa == *t)).count();
        100.0 * n as f64 / predictions.len() as f64
    };
    Ok(ZeroShot {
        drugs: predictions.len(),
        moas,
        top1: hit(1),
        top3: hit(3),
        chance_top1: 100.0 / moas as f64,
        chance_top3: 100.0 * 3.0f64.min(moas as f64) / moas as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        // Two MoAs on two axes; drug b sits between the axes, nearer to x.
        let rows = [1.0, 0.0, 0.9, 0.1, 0.0, 2.0, 0.1, 0.9];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Reference::new(&rows, 2, &s(&["a", "b", "c", "c"]), &s(&["X", "X", "Y", "Y"])).unwrap()
    }

    #[test]
    fn moas_rank_by_cosine_to_their_centroid() {
        let r = reference();
        let p = r.predict("q", &[3.0, 0.5], 2).unwrap();
        assert_eq!(p.moas[0].moa, "X");
        // Hand-computed: centroid of X is normalize((1,0) + (0.9,0.1)/|.|).
        let b = (0.9f64 / 0.82f64.sqrt(), 0.1 / 0.82f64.sqrt());
        let cx = (1.0 + b.0, b.1);
        let nx = (cx.0 * cx.0 + cx.1 * cx.1).sqrt();
        let q = (3.0 / 9.25f64.sqrt(), 0.5 / 9.25f64.sqrt());
        assert!((p.moas[0].score - (q.0 * cx.0 + q.1 * cx.1) / nx).abs() < 1e-6, "{:?}", p.moas);
        assert_eq!(p.nearest.iter().map(|n| n.drug.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(p.rows, 1);
    }

    #[test]
    fn a_query_of_several_videos_is_pooled_and_scale_does_not_matter() {
        let r = reference();
        let one = r.predict("q", &[0.2, 1.0], 3).unwrap();
        let two = r.predict("q", &[0.4, 2.0, 0.02, 0.1], 3).unwrap();
        for (a, b) in one.moas.iter().zip(&two.moas) {
            assert_eq!(a.moa, b.moa);
            assert!((a.score - b.score).abs() < 1e-6);
        }
        assert_eq!(two.rows, 2);
        assert_eq!(one.moas[0].moa, "Y");
    }

    #[test]
    fn zero_shot_counts_top_k_hits_against_chance() {
        let r = reference();
        let preds = vec![r.predict("1", &[1.0, 0.0], 1).unwrap(), r.predict("2", &[1.0, 0.0], 1).unwrap()];
        let z = zero_shot_accuracy(&preds, &["X".into(), "Y".into()]).unwrap();
        assert_eq!((z.top1, z.top3, z.chance_top1, z.moas), (50.0, 100.0, 50.0, 2));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Reference::new(&[1.0, 2.0, 3.0], 2, &["a".into()], &["X".into()]).is_err());
        assert!(reference().predict("q", &[1.0, 2.0, 3.0], 1).is_err());
    }
}
