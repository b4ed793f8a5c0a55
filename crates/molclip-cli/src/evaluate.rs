//! `molclip evaluate`: the MitoReID protocol on embeddings and their metadata, or on a run's
//! embedding of a dataset (`molclip_eval::SetEvaluation` does the work).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use molclip_core::write_atomic;
use molclip_data::Identity;
use molclip_experiment::embedding::EMBED_BATCH;
use molclip_experiment::{open_dataset, RunDir};

use crate::progress::Bars;

#[derive(Args)]
pub struct EvaluateArgs {
    /// Features, float32 or float64 .npy of shape [N, D].
    #[arg(long, required_unless_present = "run")]
    embeddings: Option<PathBuf>,
    /// CSV with columns set (query, gallery, novel, train), replicate, drug, moa; one row per embedding row.
    #[arg(long, required_unless_present = "run")]
    metadata: Option<PathBuf>,
    /// Instead: a run folder of `molclip train`, whose model embeds --data's query, gallery
    /// (and novel) videos first (written to RUN/embeddings.npy and .csv).
    #[arg(long, requires = "data", conflicts_with_all = ["embeddings", "metadata"])]
    run: Option<PathBuf>,
    /// With --run: the dataset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --run: `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write {"drug": {...}, "moa": {...}} (percentages) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the CMC curves (rank, drug, moa) here.
    #[arg(long)]
    cmc_csv: Option<PathBuf>,
    /// CMC curve length.
    #[arg(long, default_value_t = molclip_eval::DEFAULT_MAX_RANK)]
    max_rank: usize,
    /// Nearest gallery videos that vote on a novel drug's MoA.
    #[arg(long, default_value_t = 10, value_parser = crate::at_least_one)]
    novel_k: usize,
    /// Write the novel drugs' MoA confusion matrix (rows true, columns predicted) here.
    #[arg(long)]
    confusion_csv: Option<PathBuf>,
}

pub fn evaluate(args: EvaluateArgs, quiet: bool) -> Result<()> {
    let (embeddings, metadata) = match (&args.run, &args.data) {
        (Some(run), Some(data)) => {
            let progress = Bars::new(quiet);
            let index = open_dataset(data, &progress)?;
            let (run, device) = (RunDir::new(run), molclip::parse_device(&args.device)?);
            let splits = molclip_experiment::evaluation_splits(&index);
            let out = run.embeddings_path();
            let meta =
                molclip_experiment::embed_to_files(&run, &index, &splits, &out, &device, EMBED_BATCH, &progress)?;
            (out, meta)
        }
        _ => (args.embeddings.clone().context("--embeddings")?, args.metadata.clone().context("--metadata")?),
    };
    let features = molclip_eval::npy::read_npy(&embeddings)?;
    let set = molclip_eval::EmbeddingSet::from_files(&features, &metadata)?;
    let result = molclip_eval::SetEvaluation::new(&set, args.max_rank, args.novel_k)?;
    println!("{} queries, {} gallery videos, {}-d features", set.query.1.len(), set.gallery.1.len(), features.cols);
    println!("{:<20} {:>7} {:>7} {:>7} {:>7} {:>8}", "task", "mAP", "rank-1", "rank-5", "rank-10", "queries");
    for identity in Identity::ALL {
        let m = result.tasks.task(identity);
        let task = identity.task();
        println!(
            "{task:<20} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8}",
            m.map, m.rank1, m.rank5, m.rank10, m.valid_queries
        );
    }
    match &result.novel {
        Some(novel) => {
            let votes = &novel.votes;
            match (votes.drug_accuracy, votes.video_accuracy) {
                (Some(drugs), Some(videos)) => println!(
                    "novel drugs: MoA named right for {drugs:.1}% of {} drugs of a known MoA ({videos:.1}% of their \
                     videos), {} nearest gallery videos voting",
                    votes.drugs.iter().filter(|d| d.moa != molclip_eval::NO_MOA).count(),
                    votes.k
                ),
                _ => println!(
                    "novel drugs: {} drugs named by their {} videos' {} nearest gallery videos (their MoAs are \
                     unknown, so the vote is not scored)",
                    votes.drugs.len(),
                    votes.videos,
                    votes.k
                ),
            }
            match (&novel.retrieval, &novel.retrieval_skipped) {
                (Some(r), _) => println!(
                    "novel drugs as queries (gallery plus novel videos): drug mAP {:.2}, MoA mAP {:.2}",
                    r.drug.map, r.moa.map
                ),
                (None, why) => eprintln!("novel drugs as queries: skipped ({})", why.as_deref().unwrap_or("")),
            }
            if let Some(path) = &args.confusion_csv {
                write_atomic(path, votes.confusion_csv(&set.moas.names).as_bytes())?;
            }
        }
        None if args.confusion_csv.is_some() => {
            anyhow::bail!("--confusion-csv needs novel rows (set = novel) in {}", metadata.display())
        }
        None => {}
    }
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&result)?.as_bytes())?;
    }
    if let Some(path) = &args.cmc_csv {
        write_atomic(path, result.cmc_csv().as_bytes())?;
    }
    Ok(())
}
