//! The MoA of drugs never seen in training: each novel video's k nearest
//! gallery videos vote with their MoA; a drug's votes are the sum over its
//! videos. Ties go to the MoA whose voters are closer in total, then to the
//! lower MoA id.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::EvalError;
use crate::metadata::{Metadata, NO_MOA};
use crate::reid::{check_labels, check_widths, evaluate, for_each_distance_block, Embeddings, Evaluation};

/// A novel drug's MoA as its videos' nearest gallery videos name it.
#[derive(Debug, Clone, Serialize)]
pub struct DrugPrediction {
    /// The drug's id.
    pub drug: u32,
    /// Its true MoA's id ([`NO_MOA`] when unknown: the vote is a prediction only).
    pub moa: u32,
    /// The MoA the vote names.
    pub predicted: u32,
    /// Its videos.
    pub videos: usize,
    /// (MoA id, votes), most votes first.
    pub votes: Vec<(u32, usize)>,
}

/// The novel drugs' MoAs by vote.
#[derive(Debug, Clone, Serialize)]
pub struct NovelReport {
    /// Nearest gallery videos voting per video.
    pub k: usize,
    /// Novel videos.
    pub videos: usize,
    /// Percent of novel videos of a known MoA whose own vote names it; `None` when no
    /// novel drug's MoA is known.
    pub video_accuracy: Option<f64>,
    /// Each drug's vote.
    pub drugs: Vec<DrugPrediction>,
    /// Percent of novel drugs of a known MoA named right; `None` when none is known.
    pub drug_accuracy: Option<f64>,
}

/// Votes per MoA id: how many, and their summed distance (which breaks ties).
type Tally = BTreeMap<u32, (usize, f64)>;

/// Tallies votes; `None` where there are none.
fn winner(tally: &Tally) -> Option<u32> {
    tally.iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.total_cmp(&a.1 .1)).then(b.0.cmp(a.0))).map(|(&m, _)| m)
}

/// For each row of `a`, the MoAs of its `k` nearest gallery videos (count and summed
/// distance per MoA), leaving out the gallery videos `skip(row, j)` names and those outside
/// the MoA task.
fn knn_tallies(
    a: &Embeddings,
    gallery: &Embeddings,
    g: &Metadata,
    k: usize,
    skip: impl Fn(usize, usize) -> bool,
) -> Result<Vec<Tally>, EvalError> {
    check_labels(gallery, g, "gallery")?;
    let ng = gallery.len();
    let mut out = Vec::with_capacity(a.len());
    for_each_distance_block(a, gallery, |start, block| {
        for (r, dist) in block.chunks(ng).enumerate() {
            let mut order: Vec<usize> = (0..ng).filter(|&j| g.moa[j] != NO_MOA && !skip(start + r, j)).collect();
            let k = k.min(order.len());
            let mut tally = BTreeMap::new();
            if k > 0 {
                order.select_nth_unstable_by(k - 1, |&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
                for &j in &order[..k] {
                    let e = tally.entry(g.moa[j]).or_insert((0, 0.0));
                    e.0 += 1;
                    e.1 += dist[j];
                }
            }
            out.push(tally);
        }
    })?;
    Ok(out)
}

/// The MoA each query video is given by its `k` nearest gallery videos, under the
/// protocol's rule: gallery videos of the query's drug in the query's replicate do not
/// vote. `None` where no gallery video is left.
pub fn query_moa_votes(
    query: &Embeddings,
    q: &Metadata,
    gallery: &Embeddings,
    g: &Metadata,
    k: usize,
) -> Result<Vec<Option<u32>>, EvalError> {
    if k == 0 || gallery.is_empty() {
        return Err(EvalError::Input("k must be at least 1 and the gallery not empty".into()));
    }
    check_labels(query, q, "query")?;
    let tallies = knn_tallies(query, gallery, g, k, |i, j| q.drug[i] == g.drug[j] && q.replicate[i] == g.replicate[j])?;
    Ok(tallies.iter().map(winner).collect())
}

/// Retrieval for drugs never trained on, under the protocol's rules: the novel videos are
/// the queries, and the gallery is the gallery plus the novel videos themselves. The
/// query's own drug in its own replicate is removed (the query with it), so a novel drug
/// is identified through its videos in the other replicates, and its MoA through the seen
/// drugs of that MoA and those same videos. This is where what a model learned about
/// drugs in general, not about the training drugs, shows.
pub fn novel_retrieval(
    novel: &Embeddings,
    n: &Metadata,
    gallery: &Embeddings,
    g: &Metadata,
    max_rank: usize,
) -> Result<Evaluation, EvalError> {
    if novel.is_empty() {
        return Err(EvalError::Input("no novel videos (set = novel) to use as queries".into()));
    }
    check_widths(novel, gallery, "novel", "gallery")?;
    let all = gallery.concat(novel)?;
    let mut labels = g.clone();
    labels.replicate.extend(&n.replicate);
    labels.drug.extend(&n.drug);
    labels.moa.extend(&n.moa);
    evaluate(novel, n, &all, &labels, max_rank)
}

/// Names each novel drug's MoA by the votes of its videos' `k` nearest gallery videos.
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
    if k == 0 || gallery.is_empty() {
        return Err(EvalError::Input("k must be at least 1 and the gallery not empty".into()));
    }
    check_labels(novel, n, "novel")?;
    let per_video = knn_tallies(novel, gallery, g, k, |_, _| false)?;
    let known_videos = n.moa.iter().filter(|&&m| m != NO_MOA).count();
    let correct_videos = per_video.iter().zip(&n.moa).filter(|(t, &m)| m != NO_MOA && winner(t) == Some(m)).count();
    let mut by_drug: BTreeMap<u32, (u32, usize, Tally)> = BTreeMap::new();
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
        .map(|(drug, (moa, videos, tally))| -> Result<DrugPrediction, EvalError> {
            let mut votes: Vec<(u32, usize)> = tally.iter().map(|(&m, &(v, _))| (m, v)).collect();
            votes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            Ok(DrugPrediction {
                drug,
                moa,
                predicted: winner(&tally).ok_or_else(|| {
                    EvalError::Input("no gallery video has a MoA to vote with (every `moa` is empty)".into())
                })?,
                videos,
                votes,
            })
        })
        .collect::<Result<_, _>>()?;
    let known = drugs.iter().filter(|d| d.moa != NO_MOA).count();
    let right = drugs.iter().filter(|d| d.predicted == d.moa).count();
    let percent = |part: usize, whole: usize| (whole > 0).then(|| 100.0 * part as f64 / whole as f64);
    Ok(NovelReport {
        k,
        videos: novel.len(),
        video_accuracy: percent(correct_videos, known_videos),
        drug_accuracy: percent(right, known),
        drugs,
    })
}

impl NovelReport {
    /// Confusion matrix over drugs as CSV: rows true MoA, columns predicted MoA.
    pub fn confusion_csv(&self, moa_names: &[String]) -> String {
        let scored = || self.drugs.iter().filter(|d| d.moa != NO_MOA);
        let used: std::collections::BTreeSet<u32> = scored().flat_map(|d| [d.moa, d.predicted]).collect();
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
                let c = scored().filter(|d| d.moa == t && d.predicted == p).count();
                out.push_str(&format!(",{c}"));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(replicate: &[u32], drug: &[u32], moa: &[u32]) -> Metadata {
        Metadata { replicate: replicate.to_vec(), drug: drug.to_vec(), moa: moa.to_vec() }
    }

    fn unit(deg: f64) -> [f64; 2] {
        let r = deg.to_radians();
        [r.cos(), r.sin()]
    }

    #[test]
    fn novel_retrieval_finds_a_new_drug_in_its_other_replicate_and_never_itself() {
        // Seen gallery: drug 0 (MoA 0) at 0 degrees, drug 1 (MoA 1) at 90, both in replicate 1.
        let gallery = Embeddings::from_rows(2, &[unit(0.0), unit(90.0)].concat()).unwrap();
        let g = meta(&[1, 1], &[0, 1], &[0, 1]);
        // Novel drug 2 (MoA 0): one video in replicate 1 at 5 degrees, one in replicate 2 at 20.
        let novel = Embeddings::from_rows(2, &[unit(5.0), unit(20.0)].concat()).unwrap();
        let n = meta(&[1, 2], &[2, 2], &[0, 0]);
        let r = novel_retrieval(&novel, &n, &gallery, &g, 10).unwrap();
        // The l1 video ranks drug 0 (5 degrees away) before its own l2 video (15): drug AP 1/2;
        // the l2 video finds the l1 video first (15 against 20): AP 1. Itself never counts.
        assert!((r.drug.map - 75.0).abs() < 1e-9, "{}", r.drug.map);
        assert_eq!((r.drug.rank1, r.drug.valid_queries), (50.0, 2));
        // For the MoA both first neighbours are MoA 0 and drug 1 comes last: mAP 100.
        assert!((r.moa.map - 100.0).abs() < 1e-9, "{}", r.moa.map);
        // A novel drug seen in one replicate only has no match for the drug task.
        let lone = meta(&[1, 1], &[2, 3], &[0, 0]);
        assert!(novel_retrieval(&novel, &lone, &gallery, &g, 10).is_err());
        assert!(novel_retrieval(&Embeddings::empty(2), &Metadata::default(), &gallery, &g, 10).is_err());
    }

    #[test]
    fn a_query_does_not_vote_with_its_own_drug_in_its_own_replicate() {
        // Gallery on a line: drug 0 (MoA 0) in replicates 1 and 2, drug 1 (MoA 1) in replicate 1.
        let gallery = Embeddings::from_rows(2, &[1.0, 0.0, 0.8, 0.6, 0.6, 0.8]).unwrap();
        let g = meta(&[1, 2, 1], &[0, 0, 1], &[0, 0, 1]);
        let query = Embeddings::from_rows(2, &[1.0, 0.05, 1.0, 0.05]).unwrap();
        // The first query is drug 0 in replicate 1: its nearest gallery video (same drug,
        // same replicate) is left out, so with k = 1 the next one, drug 0 in l2, decides.
        // The second is drug 2 of MoA 1 in replicate 1: nothing is left out.
        let q = meta(&[1, 1], &[0, 2], &[0, 1]);
        assert_eq!(query_moa_votes(&query, &q, &gallery, &g, 1).unwrap(), vec![Some(0), Some(0)]);
        // k = 2: the first query sees l2's drug 0 and drug 1, one vote each; the closer wins.
        assert_eq!(query_moa_votes(&query, &q, &gallery, &g, 2).unwrap(), vec![Some(0), Some(0)]);
        // A gallery holding only the query's own drug and replicate leaves no voter.
        let lone = Embeddings::from_rows(2, &[1.0, 0.0]).unwrap();
        assert_eq!(query_moa_votes(&query, &q, &lone, &meta(&[1], &[0], &[0]), 3).unwrap(), vec![None, Some(0)]);
        assert!(query_moa_votes(&query, &q, &gallery, &g, 0).is_err());
    }
}
