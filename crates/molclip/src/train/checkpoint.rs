//! Checkpoints: a folder with the weights (one safetensors file per parameter store), the
//! optimiser state and the trainer's own state, written atomically. The new folder is written
//! beside the old one under a temporary name, then renamed into place, so a crash leaves either
//! the old checkpoint or the new one, never a half-written one. `checksums.txt` holds every
//! file's SHA-256, checked on load: flipped bytes are caught, not trained on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use molclip_core::{sha256_file, sha256_hex, IoError};

use crate::error::{ModelError, Result};
use crate::nn::{read_safetensors, write_safetensors, ParamStore};
use crate::optim::Optimizer;

const OPTIMIZER: &str = "optimizer";
const STATE: &str = "state.json";
const CHECKSUMS: &str = "checksums.txt";

/// What a checkpoint folder holds, read back.
pub struct Checkpoint<S> {
    /// Weights by store name (`model`, ...).
    pub stores: HashMap<String, HashMap<String, Tensor>>,
    /// The optimiser's state.
    pub optimizer: HashMap<String, Tensor>,
    /// The trainer's state.
    pub state: S,
}

/// Writes `dir` (for example `RUN/checkpoints/last`) atomically: each store as
/// `<name>.safetensors`, the optimiser state, and `state` as JSON.
pub fn save_checkpoint<S: Serialize>(
    dir: &Path,
    stores: &[(&str, &ParamStore)],
    optimizer: &Optimizer,
    state: &S,
) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(ModelError::io(parent))?;
    let name = dir
        .file_name()
        .ok_or_else(|| ModelError::Input(format!("{}: not a folder path", dir.display())))?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(ModelError::io(&tmp))?;
    }
    // Errors name the checkpoint, not its temporary folder, which goes on any error.
    let real = |path: PathBuf| path.strip_prefix(&tmp).map(|rest| dir.join(rest)).unwrap_or(path);
    let written = write_checkpoint_files(&tmp, stores, optimizer, state).map_err(|e| match e {
        ModelError::Io { path, source } | ModelError::Nn(molclip_nn::NnError::Io(IoError { path, source })) => {
            ModelError::Io { path: real(path), source }
        }
        other => other,
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    // Swap: the old folder moves aside, the new one takes its name, the old one goes.
    let old: PathBuf = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(ModelError::io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(ModelError::io(dir))?;
    // The old folder goes, and so do the leftovers of swaps an earlier process did not finish.
    for leftover in std::iter::once(old).chain(leftovers(dir).into_iter().map(|(p, _)| p)) {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(ModelError::io(&leftover))?;
        }
    }
    Ok(())
}

/// The files of a checkpoint, written into `tmp`; `state.json` last.
fn write_checkpoint_files<S: Serialize>(
    tmp: &Path,
    stores: &[(&str, &ParamStore)],
    optimizer: &Optimizer,
    state: &S,
) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(ModelError::io(tmp))?;
    let mut names = Vec::new();
    for (name, store) in stores {
        store.save(&tmp.join(format!("{name}.safetensors")))?;
        names.push(name.to_string());
    }
    write_safetensors(&optimizer.state_tensors()?, &tmp.join(format!("{OPTIMIZER}.safetensors")))?;
    let write =
        |file: &str, bytes: &[u8]| std::fs::write(tmp.join(file), bytes).map_err(ModelError::io(&tmp.join(file)));
    write("stores.txt", names.join("\n").as_bytes())?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| ModelError::Input(format!("checkpoint state: {e}")))?;
    // Every file's digest, state.json's from the bytes about to be written; state.json goes
    // last, as the mark of a complete checkpoint.
    let mut sums = String::new();
    let files = names
        .iter()
        .map(|n| format!("{n}.safetensors"))
        .chain([format!("{OPTIMIZER}.safetensors"), "stores.txt".into()]);
    for file in files {
        let path = tmp.join(&file);
        sums.push_str(&format!("{}  {file}\n", sha256_file(&path).map_err(ModelError::io(&path))?));
    }
    sums.push_str(&format!("{}  {STATE}\n", sha256_hex(&json)));
    write(CHECKSUMS, sums.as_bytes())?;
    write(STATE, &json)
}

/// The folders a swap of `dir` leaves beside it until it finishes (`.NAME.tmp-PID`, the new
/// checkpoint; `.NAME.old-PID`, the one it replaces), with whether each is the new one.
fn leftovers(dir: &Path) -> Vec<(PathBuf, bool)> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { return Vec::new() };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let rest = file.strip_prefix(&format!(".{name}."))?;
            let new = rest.starts_with("tmp-");
            (new || rest.starts_with("old-")).then(|| (e.path(), new))
        })
        .collect()
}

/// A complete checkpoint a crash left beside `dir` in the middle of a swap, when `dir` itself
/// is missing: the new one if it is complete (`state.json` is written last), else the old one.
fn recoverable(dir: &Path) -> Option<PathBuf> {
    if dir.exists() {
        return None;
    }
    let mut complete: Vec<(PathBuf, bool)> =
        leftovers(dir).into_iter().filter(|(p, _)| p.join(STATE).is_file()).collect();
    // The new copy first; among several, the most recently written.
    let written = |p: &Path| p.join(STATE).metadata().and_then(|m| m.modified()).ok();
    complete.sort_by_key(|(p, new)| (*new, written(p)));
    complete.pop().map(|(p, _)| p)
}

/// Whether `dir` holds a checkpoint written by [`save_checkpoint`], or a crash in the middle
/// of writing one left a complete copy beside it, which [`load_checkpoint`] puts in place.
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(STATE).is_file() || recoverable(dir).is_some()
}

/// Reads a checkpoint folder written by [`save_checkpoint`].
pub fn load_checkpoint<S: DeserializeOwned>(dir: &Path) -> Result<Checkpoint<S>> {
    if let Some(copy) = recoverable(dir) {
        std::fs::rename(&copy, dir).map_err(ModelError::io(dir))?;
    }
    verify_checksums(dir)?;
    let state_path = dir.join(STATE);
    let text = std::fs::read(&state_path).map_err(ModelError::io(&state_path))?;
    let state = serde_json::from_slice(&text).map_err(|e| ModelError::Weights {
        what: state_path.display().to_string(),
        message: format!("not a checkpoint state: {e}"),
    })?;
    let list = dir.join("stores.txt");
    let names = std::fs::read_to_string(&list).map_err(ModelError::io(&list))?;
    let mut stores = HashMap::new();
    for name in names.lines().filter(|l| !l.is_empty()) {
        stores.insert(name.to_string(), read_safetensors(&dir.join(format!("{name}.safetensors")))?);
    }
    Ok(Checkpoint { stores, optimizer: read_safetensors(&dir.join(format!("{OPTIMIZER}.safetensors")))?, state })
}

/// Checks every file `checksums.txt` lists against its digest. A checkpoint written before
/// checksums were recorded has no list and is taken as it is.
fn verify_checksums(dir: &Path) -> Result<()> {
    let list = dir.join(CHECKSUMS);
    let Ok(text) = std::fs::read_to_string(&list) else { return Ok(()) };
    for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let Some((expected, file)) = line.split_once("  ") else {
            return Err(ModelError::Weights {
                what: format!("{}:{}", list.display(), k + 1),
                message: "expected `<sha256>  <file>`".into(),
            });
        };
        let path = dir.join(file);
        let actual = sha256_file(&path).map_err(ModelError::io(&path))?;
        if actual != expected {
            return Err(ModelError::Weights {
                what: path.display().to_string(),
                message: format!(
                    "damaged: its SHA-256 is {actual}, the checkpoint recorded {expected} (flipped bytes or an \
                     incomplete copy); restore the run folder from a backup, or train again without --resume"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;
    use crate::optim::OptimizerConfig;
    use candle_core::Device;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct State {
        epoch: usize,
        step: u64,
    }

    #[test]
    fn a_checkpoint_restores_weights_optimizer_and_state_and_replaces_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoints").join("last");
        let store = ParamStore::new(4, &Device::Cpu);
        let lin = Linear::new(&store.root().pp("head"), 3, 2, true).unwrap();
        let mut opt = Optimizer::new(store.trainable(), &OptimizerConfig::default()).unwrap();
        let x = Tensor::new(&[[1f32, 2.0, 3.0]], &Device::Cpu).unwrap();
        for step in 0..3u64 {
            let grads = lin.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
            opt.step(&grads, 0.1).unwrap();
            save_checkpoint(&dir, &[("model", &store)], &opt, &State { epoch: 1, step }).unwrap();
        }
        let ck: Checkpoint<State> = load_checkpoint(&dir).unwrap();
        assert_eq!(ck.state, State { epoch: 1, step: 2 });
        for (name, t) in store.tensors() {
            assert_eq!(
                ck.stores["model"][&name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(ck.optimizer.contains_key("exp_avg.head.weight"));
        // Only the checkpoint itself is left: no temporary or old folders.
        let names: Vec<_> = std::fs::read_dir(dir.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("last")]);
        // Killed between the two renames of a swap: no `last`, the new copy and the old one
        // beside it. The new one is found and put in place.
        let parent = dir.parent().unwrap();
        std::fs::rename(&dir, parent.join(".last.old-1")).unwrap();
        save_checkpoint(&parent.join("copy"), &[("model", &store)], &opt, &State { epoch: 2, step: 9 }).unwrap();
        std::fs::rename(parent.join("copy"), parent.join(".last.tmp-1")).unwrap();
        assert!(is_checkpoint(&dir));
        let ck: Checkpoint<State> = load_checkpoint(&dir).unwrap();
        assert_eq!(ck.state, State { epoch: 2, step: 9 });
        // The next save clears the old copy away.
        save_checkpoint(&dir, &[("model", &store)], &opt, &State { epoch: 3, step: 10 }).unwrap();
        let names: Vec<_> = std::fs::read_dir(parent).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("last")]);
        // A new copy that was not finished (no state.json) is passed over for the old one.
        std::fs::rename(&dir, parent.join(".last.old-2")).unwrap();
        std::fs::create_dir(parent.join(".last.tmp-2")).unwrap();
        let ck: Checkpoint<State> = load_checkpoint(&dir).unwrap();
        assert_eq!(ck.state, State { epoch: 3, step: 10 });
        // One flipped byte in the weights is caught, naming the file.
        let weights = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&weights, &bytes).unwrap();
        let err = load_checkpoint::<State>(&dir).err().unwrap().to_string();
        assert!(err.contains("model.safetensors") && err.contains("damaged"), "{err}");
        bytes[last] ^= 0x10;
        std::fs::write(&weights, &bytes).unwrap();
        load_checkpoint::<State>(&dir).unwrap();
        // A folder that is not a checkpoint is an error naming the file.
        let err = load_checkpoint::<State>(tmp.path()).err().unwrap().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
