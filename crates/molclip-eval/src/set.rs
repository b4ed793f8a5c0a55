//! Everything `molclip evaluate` reports for one embedding set: both tasks of the protocol
//! and, when the set has novel drugs, their MoA by vote and their retrieval as queries.

use serde::Serialize;

use crate::error::EvalError;
use crate::metadata::{EmbeddingSet, NO_MOA};
use crate::novel::{novel_moa_votes, novel_retrieval, NovelReport};
use crate::reid::{evaluate, Evaluation};

/// A novel drug's MoA as its videos' nearest gallery videos name it, by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedPrediction {
    /// The drug.
    pub drug: String,
    /// Its true MoA; `None` when the drug's MoA is unknown.
    pub moa: Option<String>,
    /// The MoA the vote names.
    pub predicted: String,
    /// Its videos.
    pub videos: usize,
    /// Whether the vote is right; `None` when the drug's MoA is unknown.
    pub correct: Option<bool>,
}

/// The novel drugs' section of [`SetEvaluation`].
#[derive(Debug, Clone, Serialize)]
pub struct NovelSection {
    /// Nearest gallery videos voting.
    pub k: usize,
    /// Percent of novel drugs of a known MoA named right.
    pub drug_accuracy: Option<f64>,
    /// Percent of novel videos of a known MoA whose own vote is right.
    pub video_accuracy: Option<f64>,
    /// Each drug's vote.
    pub drugs: Vec<NamedPrediction>,
    /// The novel videos as queries (gallery plus novel videos); absent when no novel drug
    /// was imaged in two replicates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<Evaluation>,
    /// Why `retrieval` is absent.
    #[serde(skip)]
    pub retrieval_skipped: Option<String>,
    /// The votes by id, for the confusion matrix.
    #[serde(skip)]
    pub votes: NovelReport,
}

/// Both tasks, and the novel drugs when there are any: the JSON of `molclip evaluate`.
#[derive(Debug, Clone, Serialize)]
pub struct SetEvaluation {
    /// Drug identification and MoA recognition on the query and gallery rows.
    #[serde(flatten)]
    pub tasks: Evaluation,
    /// The novel drugs, when the set has novel rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novel: Option<NovelSection>,
}

impl SetEvaluation {
    /// Evaluates `set`: CMC curves to `max_rank`, novel drugs named by `novel_k` voters.
    pub fn new(set: &EmbeddingSet, max_rank: usize, novel_k: usize) -> Result<Self, EvalError> {
        let ((q, qm), (g, gm)) = (&set.query, &set.gallery);
        let tasks = evaluate(q, qm, g, gm, max_rank)?;
        let (n, nm) = &set.novel;
        if nm.is_empty() {
            return Ok(Self { tasks, novel: None });
        }
        let votes = novel_moa_votes(n, nm, g, gm, novel_k)?;
        let name = |names: &[String], id: u32| names[id as usize].clone();
        let drugs = votes
            .drugs
            .iter()
            .map(|d| NamedPrediction {
                drug: name(&set.drugs.names, d.drug),
                moa: (d.moa != NO_MOA).then(|| name(&set.moas.names, d.moa)),
                predicted: name(&set.moas.names, d.predicted),
                videos: d.videos,
                correct: (d.moa != NO_MOA).then_some(d.moa == d.predicted),
            })
            .collect();
        // Novel drugs seen in one replicate only have nothing to be identified by.
        let (retrieval, retrieval_skipped) = match novel_retrieval(n, nm, g, gm, max_rank) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let novel = NovelSection {
            k: votes.k,
            drug_accuracy: votes.drug_accuracy,
            video_accuracy: votes.video_accuracy,
            drugs,
            retrieval,
            retrieval_skipped,
            votes,
        };
        Ok(Self { tasks, novel: Some(novel) })
    }

    /// The CMC curves as CSV: `rank,drug,moa`.
    pub fn cmc_csv(&self) -> String {
        let mut text = String::from("rank,drug,moa\n");
        for (k, (d, m)) in self.tasks.drug.cmc.iter().zip(&self.tasks.moa.cmc).enumerate() {
            text.push_str(&format!("{},{d},{m}\n", k + 1));
        }
        text
    }
}
