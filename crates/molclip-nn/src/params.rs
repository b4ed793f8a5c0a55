//! Named parameters, initialised as PyTorch initialises its modules, saved and loaded as
//! safetensors with PyTorch's state-dict names.
//!
//! Models are built from a [`Vb`] ("var builder") the way candle-transformers builds them:
//! each sub-module gets `vb.pp("name")`, so a weight is called `layer1.0.conv1.weight`
//! exactly as in the PyTorch checkpoint, and loading one is a single call.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{NnError, Result};

/// How a parameter starts. Each variant reproduces a PyTorch module default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// One value everywhere.
    Const(f64),
    /// U(-bound, bound). `nn.Linear` and `nn.ConvNd` weights use kaiming_uniform(a=√5), which
    /// reduces to bound = 1/√fan_in; their biases use the same bound.
    Uniform(f64),
    /// N(0, std²): `nn.Embedding` uses std 1.
    Normal(f64),
    /// N(0, std²) redrawn outside ±2 std, as timm's `trunc_normal_` (tokens, position embeddings).
    TruncNormal(f64),
}

impl Init {
    /// The `nn.Linear` / `nn.ConvNd` default for a weight or bias with this fan-in.
    pub fn pytorch_default(fan_in: usize) -> Self {
        Init::Uniform(1.0 / (fan_in.max(1) as f64).sqrt())
    }
}

/// A parameter or buffer of a store.
#[derive(Clone)]
pub struct Entry {
    /// Its value.
    pub var: Var,
    /// False for buffers (batch-norm running statistics) and frozen parameters.
    pub trainable: bool,
}

struct Inner {
    seed: u64,
    entries: BTreeMap<String, Entry>,
    loaded: HashMap<String, Tensor>,
    /// Loading a checkpoint: every weight must come from this file.
    strict: Option<PathBuf>,
}

/// All parameters and buffers of a model, by name. Cheap to clone (shared).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
}

impl ParamStore {
    /// A store whose parameters are initialised from `seed`. Each parameter draws from its own
    /// stream, keyed by its name, so adding a module never changes another module's weights.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self::with_tensors(seed, HashMap::new(), device)
    }

    /// A store whose parameters take these values where the names match, and are initialised
    /// from `seed` otherwise.
    pub fn with_tensors(seed: u64, tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        let inner = Inner { seed, entries: BTreeMap::new(), loaded: tensors, strict: None };
        Self { inner: Arc::new(Mutex::new(inner)), device: device.clone() }
    }

    /// A checkpoint: every weight the model asks for must be in this safetensors file (for
    /// example a PyTorch `state_dict` saved with `safetensors.torch.save_file`). Call
    /// [`ParamStore::check_all_used`] after building the model to also refuse extra weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = read_safetensors(path)?;
        let store = Self::with_tensors(0, tensors, device);
        store.lock().strict = Some(path.to_path_buf());
        Ok(store)
    }

    /// Where the parameters live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A builder for top-level names.
    pub fn root(&self) -> Vb {
        Vb { store: self.clone(), prefix: String::new(), frozen: false }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parameters the optimiser updates, in name order.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.lock().entries.iter().filter(|(_, e)| e.trainable).map(|(n, e)| (n.clone(), e.var.clone())).collect()
    }

    /// Every parameter and buffer, in name order.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        self.lock().entries.iter().map(|(n, e)| (n.clone(), e.clone())).collect()
    }

    /// The parameter or buffer `name`, if the model asked for it.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().entries.get(name).map(|e| e.var.clone())
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Current values, as a state dict.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.lock().entries.iter().map(|(n, e)| (n.clone(), e.var.as_tensor().detach())).collect()
    }

    /// Names that were given (loaded) but never asked for by the model: a checkpoint of a
    /// different architecture. Call after building the model.
    pub fn unused(&self) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner.loaded.keys().filter(|n| !inner.entries.contains_key(*n)).cloned().collect();
        names.sort();
        names
    }

    /// Parameters and buffers under `prefix` that the model asked for but the loaded weights
    /// did not have (they were initialised instead). Call after building the model.
    pub fn missing_under(&self, prefix: &str) -> Vec<String> {
        let inner = self.lock();
        inner.entries.keys().filter(|n| n.starts_with(prefix) && !inner.loaded.contains_key(*n)).cloned().collect()
    }

    /// Fails if the loaded weights hold names the model did not use.
    pub fn check_all_used(&self, what: &Path) -> Result<()> {
        let unused = self.unused();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(8).map(|s| s.as_str()).collect();
        Err(NnError::Weights {
            path: what.to_path_buf(),
            message: format!(
                "{} weight(s) do not belong to this model (a different architecture or config?): {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > 8 { ", ..." } else { "" }
            ),
        })
    }

    /// Writes all parameters and buffers atomically (a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_safetensors(&self.tensors(), path)
    }

    fn get_or_init(&self, name: &str, shape: &[usize], dtype: DType, init: Init, trainable: bool) -> Result<Var> {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get(name) {
            if e.var.dims() != shape {
                return Err(NnError::WeightShape {
                    name: name.into(),
                    expected: shape.to_vec(),
                    found: e.var.dims().to_vec(),
                });
            }
            return Ok(e.var.clone());
        }
        let tensor = match inner.loaded.get(name) {
            Some(t) => {
                if t.dims() != shape {
                    return Err(NnError::WeightShape {
                        name: name.into(),
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                t.to_dtype(dtype)?.to_device(&self.device)?
            }
            None => match &inner.strict {
                Some(path) => {
                    return Err(NnError::Weights {
                        path: path.clone(),
                        message: format!("no weight `{name}` (a checkpoint of a different architecture or config?)"),
                    })
                }
                None => init_tensor(inner.seed, name, shape, dtype, init, &self.device)?,
            },
        };
        let var = Var::from_tensor(&tensor)?;
        inner.entries.insert(name.to_string(), Entry { var: var.clone(), trainable });
        Ok(var)
    }
}

/// Builds named parameters under a prefix.
#[derive(Clone)]
pub struct Vb {
    store: ParamStore,
    prefix: String,
    frozen: bool,
}

impl Vb {
    /// The builder for a sub-module: names below it are `prefix.name.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Vb {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Vb { store: self.store.clone(), prefix, frozen: self.frozen }
    }

    /// Parameters built below a frozen builder are not trained and carry no gradient.
    pub fn frozen(mut self, frozen: bool) -> Vb {
        self.frozen |= frozen;
        self
    }

    /// Where the parameters live.
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// The store it builds into.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A trainable parameter (unless the builder is frozen).
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let var = self.store.get_or_init(&self.name(name), shape, DType::F32, init, !self.frozen)?;
        Ok(if self.frozen { var.as_tensor().detach() } else { var.as_tensor().clone() })
    }

    /// A parameter that is saved but never trained (for example BNNeck's bias).
    pub fn fixed(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let var = self.store.get_or_init(&self.name(name), shape, DType::F32, init, false)?;
        Ok(var.as_tensor().detach())
    }

    /// A buffer: state that the forward pass updates, such as running statistics.
    pub fn buffer(&self, name: &str, shape: &[usize], dtype: DType, init: Init) -> Result<Var> {
        self.store.get_or_init(&self.name(name), shape, dtype, init, false)
    }
}

/// FNV-1a: a stable hash, so that a name keys the same stream on every platform and release.
fn stable_hash(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn init_tensor(seed: u64, name: &str, shape: &[usize], dtype: DType, init: Init, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(seed, name));
    let init_error = |message: String| NnError::Init { name: name.to_string(), message };
    let values: Vec<f32> = match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform(bound) => {
            let d = Uniform::new_inclusive(-bound, bound).map_err(|e| init_error(e.to_string()))?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::Normal(std) => {
            let d = Normal::new(0.0, std).map_err(|e| init_error(e.to_string()))?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::TruncNormal(std) => {
            let d = Normal::new(0.0, std).map_err(|e| init_error(e.to_string()))?;
            (0..n)
                .map(|_| loop {
                    let v: f64 = d.sample(&mut rng);
                    if v.abs() <= 2.0 * std {
                        break v as f32;
                    }
                })
                .collect()
        }
    };
    Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

/// Reads every tensor of a safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| NnError::Safetensors {
        path: path.to_path_buf(),
        action: "read",
        source,
    })
}

/// Reads every tensor of a weights file onto the CPU: safetensors, or a PyTorch checkpoint
/// (`.pth`, `.pt`, `.bin`: a zip of pickled tensors), its state dict under the `state_dict`
/// key when there is one, else at the top level.
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext == "safetensors" {
        return read_safetensors(path);
    }
    let read = |key| candle_core::pickle::read_all_with_key(path, key);
    let tensors = match read(Some("state_dict")) {
        Ok(t) if !t.is_empty() => t,
        _ => read(None).map_err(|e| NnError::Weights {
            path: path.to_path_buf(),
            message: format!(
                "cannot read this PyTorch checkpoint ({e}). The reader takes the zip format of torch >= 1.6 \
                 without zip64 records; torch >= 2 may write those, and torch < 1.6 wrote another format: \
                 convert the file to safetensors (python3 -c \"import torch, sys; from safetensors.torch \
                 import save_file; c = torch.load(sys.argv[1], map_location='cpu'); \
                 save_file({{k: v.contiguous() for k, v in c.get('state_dict', c).items()}}, sys.argv[2])\" \
                 IN.pth OUT.safetensors) and pass that"
            ),
        })?,
    };
    if tensors.is_empty() {
        return Err(NnError::Weights {
            path: path.to_path_buf(),
            message: "no tensors found (expected a PyTorch state dict, or one under `state_dict`)".into(),
        });
    }
    Ok(tensors.into_iter().collect())
}

/// Writes tensors to a safetensors file atomically (a temporary file beside it, then a rename).
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let cpu: HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
    molclip_core::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(&cpu, tmp).map_err(|source| NnError::Safetensors {
            path: path.to_path_buf(),
            action: "write",
            source,
        })
    })
}
