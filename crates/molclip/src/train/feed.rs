//! Feeding the model: the loader's batches, in order, each staged for the device that runs
//! the model ([`molclip_nn::staging`]). On a GPU a thread of its own writes each batch into
//! pinned host memory ahead of its step, so that the step only queues the copy; on the CPU
//! the batch's values become the tensor without a copy.

use std::sync::mpsc::{sync_channel, Receiver};

use candle_core::Device;
use molclip_data::loader::{Batch, Loader};
use molclip_nn::staging::{Staged, Staging};

use crate::error::Result;

/// Pinned buffers per staging: one the GPU reads for the current step while the next batch
/// is written into the other.
pub const PINNED_BUFFERS: usize = 2;

/// A batch ready for its step.
pub struct Fed {
    /// The batch's videos and labels; its `data` is empty, moved into `input`.
    pub batch: Batch,
    /// Its values, staged for the device (`Staged::into_tensor`).
    pub input: Staged,
}

/// The loader's batches, staged for a device, in order. The first error ends them.
pub struct Feed {
    source: Source,
}

enum Source {
    /// Staged on the consumer's thread as it asks: on the CPU, where staging moves the values,
    /// and with `prefetch = 0`.
    Inline { loader: Loader, staging: Staging, failed: bool },
    /// Staged ahead on a thread of its own (pinned memory on a GPU).
    Ahead(Receiver<Result<Fed>>),
}

impl Feed {
    /// The staging for feeds to `device`: two pinned buffers on a GPU (`MOLCLIP_PINNED` not
    /// 0), kept for every feed it serves, one after the other.
    pub fn staging(device: &Device) -> Staging {
        Staging::new(device, PINNED_BUFFERS)
    }

    /// Feeds `loader`'s batches through `staging`: staged ahead on a thread where staging
    /// copies (pinned memory) and the loader builds ahead (`prefetch` ≥ 1), else as they are
    /// asked for.
    pub fn new(loader: Loader, staging: &Staging) -> Self {
        let staging = staging.clone();
        if staging.is_pinned() && loader.builds_ahead() {
            Self::ahead(loader, staging)
        } else {
            Self { source: Source::Inline { loader, staging, failed: false } }
        }
    }

    /// Stages on a thread of its own, one batch ahead of the consumer.
    fn ahead(loader: Loader, staging: Staging) -> Self {
        // A rendezvous: the thread holds the next batch staged until the consumer takes it.
        let (tx, rx) = sync_channel(0);
        std::thread::spawn(move || {
            for batch in loader {
                let fed = batch.map_err(Into::into).and_then(|b| stage(&staging, b));
                let failed = fed.is_err();
                // A consumer that stopped early has dropped the receiver: stop too.
                if tx.send(fed).is_err() || failed {
                    break;
                }
            }
        });
        Self { source: Source::Ahead(rx) }
    }
}

fn stage(staging: &Staging, mut batch: Batch) -> Result<Fed> {
    let values = std::mem::take(&mut batch.data);
    let input = staging.stage(values, &batch.shape)?;
    Ok(Fed { batch, input })
}

impl Iterator for Feed {
    type Item = Result<Fed>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Ahead(rx) => rx.recv().ok(),
            Source::Inline { failed: true, .. } => None,
            Source::Inline { loader, staging, failed } => {
                let fed = loader.next()?.map_err(Into::into).and_then(|b| stage(staging, b));
                *failed = fed.is_err();
                Some(fed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use mitosim::{generate, DatasetPlan, SimConfig};
    use molclip_data::loader::{DataConfig, Mode, VideoDataset};
    use molclip_data::sampler::sequential_batches;
    use molclip_data::{DatasetIndex, Split};

    use super::*;

    fn both_routes(loader: impl Fn() -> Loader) -> [(bool, Feed); 2] {
        let inline =
            Feed { source: Source::Inline { loader: loader(), staging: Staging::new(&Device::Cpu, 1), failed: false } };
        [(false, inline), (true, Feed::ahead(loader(), Staging::new(&Device::Cpu, 1)))]
    }

    #[test]
    fn both_routes_feed_the_loaders_batches_in_order_and_end_at_the_first_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tiny");
        let c = SimConfig::preset("tiny").unwrap();
        generate(&DatasetPlan::new(c, Path::new(".")).unwrap(), &root, false, &|| {}).unwrap();
        let cells: Vec<_> = DatasetIndex::scan(&root).unwrap().split(Split::Train).cloned().collect();
        let dataset = Arc::new(VideoDataset::new(cells, DataConfig { prefetch: 1, ..DataConfig::default() }).unwrap());
        let batches = sequential_batches(dataset.len(), 5);
        assert!(batches.len() >= 3);
        let mode = Mode::Train { seed: 3, epoch: 1 };
        let loaded: Vec<Batch> = Loader::start(dataset.clone(), batches.clone(), mode).map(|b| b.unwrap()).collect();
        for (ahead, feed) in both_routes(|| Loader::start(dataset.clone(), batches.clone(), mode)) {
            let mut n = 0;
            for (fed, want) in feed.zip(&loaded) {
                let fed = fed.unwrap();
                assert_eq!(fed.batch.indices, want.indices, "ahead: {ahead}");
                assert!(fed.batch.data.is_empty(), "the values moved into the input");
                let x = fed.input.into_tensor(&Device::Cpu).unwrap();
                assert_eq!(x.dims(), want.shape.as_slice());
                assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.data, "ahead: {ahead}");
                n += 1;
            }
            assert_eq!(n, loaded.len(), "ahead: {ahead}");
        }
        // The second batch's first video is gone: one batch, the error naming it, then nothing.
        let gone = &dataset.cells[batches[1][0]].dir;
        std::fs::remove_dir_all(gone).unwrap();
        let uncached = Arc::new(
            VideoDataset::new(dataset.cells.clone(), DataConfig { prefetch: 1, cache: false, ..DataConfig::default() })
                .unwrap(),
        );
        for (ahead, mut feed) in both_routes(|| Loader::start(uncached.clone(), batches.clone(), mode)) {
            assert_eq!(feed.next().unwrap().unwrap().batch.indices, batches[0], "ahead: {ahead}");
            let err = feed.next().unwrap().err().expect("a video is gone");
            let folder = gone.file_name().unwrap().to_string_lossy().into_owned();
            assert!(err.to_string().contains(&folder), "ahead: {ahead}: {err}");
            assert!(feed.next().is_none(), "ahead: {ahead}");
        }
    }
}
