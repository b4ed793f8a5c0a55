//! The MoA of drugs never seen in training: each novel video's k nearest
//! gallery videos vote with their MoA; a drug's votes are the sum over its
//! videos. Ties go to the MoA whose voters are closer in total, then to the
//! lower MoA id.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::EvalError;
use crate::metadata::Metadata;
use crate::reid::{for_each_distance_block, Embeddings};

#[derive(Debug, Clone, Serialize)]
pub struct DrugPrediction {
    pub drug: u32,
    pub moa: u32,
    pub predicted: u32,
    pub videos: usize,
    /// (MoA id, votes), most votes first.
    pub votes: Vec<(u32, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NovelReport {
    pub k: usize,
    pub videos: usize,
    /// Percent of novel videos whose own vote names the right MoA.
    pub video_accuracy: f64,
    pub drugs: Vec<DrugPrediction>,
    /// Percent of novel drugs named right.
    pub drug_accuracy: f64,
}

/// Tallies votes; `None` where there are none.
fn winner(tally: &BTreeMap<u32, (usize, f64)>) -> Option<u32> {
    tally
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.total_cmp(&a.1 .1)).then(b.0.cmp(a.0)))
        .map(|(&m, _)| m)
}

pub fn novel_moa_votes(
    novel: &Embeddings,
    n: &Metadata,
    gallery: &Embeddings,
    g: &Metadata,
    k: usize,
) -> Result<NovelReport, EvalError> {
    if novel.is_empty() {
        return Err(EvalError::Input("no novel videos (set = novel) to name".into()));
    }
    if k == 0 {
        return Err(EvalError::Input("k must be at least 1".into()));
    }
    let ng = gallery.len();
    let k = k.min(ng);
    let mut per_video: Vec<BTreeMap<u32, (usize, f64)>> = Vec::with_capacity(novel.len());
    for_each_distance_block(novel, gallery, |_, block| {
        for dist in block.chunks(ng) {
            let mut order: Vec<usize> = (0..ng).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
            let mut tally = BTreeMap::new();
            for &j in &order[..k] {
                let e = tally.entry(g.moa[j]).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += dist[j];
            }
            per_video.push(tally);
        }
    });
    let correct_videos = per_video.iter().zip(&n.moa).filter(|(t, &m)| winner(t) == Some(m)).count();
    let mut by_drug: BTreeMap<u32, (u32, usize, BTreeMap<u32, (usize, f64)>)> = BTreeMap::new();
    for (i, tally) in per_video.iter().enumerate() {
        let e = by_drug.entry(n.drug[i]).or_insert((n.moa[i], 0, BTreeMap::new()));
        e.1 += 1;
        for (&m, &(v, d)) in tally {
            let t = e.2.entry(m).or_insert((0, 0.0));
            t.0 += v;
            t.1 += d;
        }
    }
    let drugs: Vec<DrugPrediction> = by_drug
        .into_iter()
        .map(|(drug, (moa, videos, tally))| {
            let mut votes: Vec<(u32, usize)> = tally.iter().map(|(&m, &(v, _))| (m, v)).collect();
            votes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            DrugPrediction { drug, moa, predicted: winner(&tally).expect("k >= 1 gives votes"), videos, votes }
        })
        .collect();
    let right = drugs.iter().filter(|d| d.predicted == d.moa).count();
    Ok(NovelReport {
        k,
        videos: novel.len(),
        video_accuracy: 100.0 * correct_videos as f64 / novel.len() as f64,
        drug_accuracy: 100.0 * right as f64 / drugs.len() as f64,
        drugs,
    })
}

impl NovelReport {
    /// Confusion matrix over drugs as CSV: rows true MoA, columns predicted MoA.
    pub fn confusion_csv(&self, moa_names: &[String]) -> String {
        let used: std::collections::BTreeSet<u32> = self.drugs.iter().flat_map(|d| [d.moa, d.predicted]).collect();
        let used: Vec<u32> = used.into_iter().collect();
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from("true\\predicted");
        for &m in &used {
            out.push(',');
            out.push_str(&quote(&moa_names[m as usize]));
        }
        out.push('\n');
        for &t in &used {
            out.push_str(&quote(&moa_names[t as usize]));
            for &p in &used {
                let c = self.drugs.iter().filter(|d| d.moa == t && d.predicted == p).count();
                out.push_str(&format!(",{c}"));
            }
            out.push('\n');
        }
        out
    }
}
