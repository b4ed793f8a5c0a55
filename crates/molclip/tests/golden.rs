//! Every encoder and loss against PyTorch: outputs, gradients of inputs and weights, and the
//! batch-norm running statistics, from the golden files `python/make_golden.py` writes.
//! Tolerance: 1e-4 relative to the largest magnitude of each reference tensor, in f32, or twice
//! PyTorch's own float32 error where that is larger (recorded in the file as `f32err.<key>`:
//! deep batch-normed networks on small inputs, see make_golden.py). A reference that is zero
//! by construction (the gradient of a bias that a batch norm cancels) must come out below
//! 1e-4 of the file's largest gradient.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use molclip::losses::{
    batch_hard_triplet, clip_loss, cross_entropy, CenterLoss, ClipInputs, Criterion, LossConfig, MetricInputs,
};
use molclip::models::{
    FrameVit, FrameVitConfig, Gin, GinConfig, GraphBatch, I3dConfig, I3dResNet, MorganMlp, MorganMlpConfig, Pooling,
    Projection, TemporalDownsampling, VideoConfig, VideoEncoderKind, VideoModel,
};
use molclip::nn::{conv3d, max_pool3d, read_safetensors, ParamStore, Window3d};

const TOLERANCE: f32 = 1e-4;

struct Golden {
    name: &'static str,
    tensors: HashMap<String, Tensor>,
}

impl Golden {
    fn load(name: &'static str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.safetensors"));
        Self { name, tensors: read_safetensors(&path).unwrap() }
    }

    fn get(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("{}: no `{key}` in the golden file", self.name))
    }

    fn var(&self, key: &str) -> Var {
        Var::from_tensor(self.get(&format!("in.{key}"))).unwrap()
    }

    fn labels(&self, key: &str) -> Vec<u32> {
        self.get(&format!("in.{key}"))
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    fn params(&self) -> HashMap<String, Tensor> {
        self.with_prefix("param.")
    }

    fn with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    }

    /// Asserts `actual` matches the reference `key`.
    fn check(&self, key: &str, actual: &Tensor) {
        let expected = self.get(key);
        assert_eq!(actual.dims(), expected.dims(), "{}: shape of {key}", self.name);
        if expected.dtype() == DType::I64 {
            assert_eq!(
                actual.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap(),
                expected.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
                "{}: {key}",
                self.name
            );
            return;
        }
        let e = expected.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = actual.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let mut scale = max_abs(&e);
        if scale < 1e-9 {
            scale = self.largest_gradient();
        }
        let pytorch = self
            .tensors
            .get(&format!("f32err.{key}"))
            .map(|t| t.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap());
        let tolerance = TOLERANCE.max(2.0 * pytorch.unwrap_or(0.0));
        let (worst, at) = a.iter().zip(&e).enumerate().fold((0f32, 0), |(w, at), (i, (x, y))| {
            let d = (x - y).abs();
            if d > w || d.is_nan() {
                (d, i)
            } else {
                (w, at)
            }
        });
        assert!(
            worst <= tolerance * scale,
            "{}: {key} differs by {worst:e} at {at} ({} vs {}), relative {:e} > {tolerance:e}",
            self.name,
            a[at],
            e[at],
            worst / scale
        );
    }

    fn largest_gradient(&self) -> f32 {
        self.tensors
            .iter()
            .filter(|(k, _)| k.starts_with("grad."))
            .map(|(_, t)| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap())
            .fold(1e-30, f32::max)
    }

    /// sum over outputs of sum(output * probe), the scalar the reference differentiated.
    fn probed(&self, outputs: &[(&str, &Tensor)]) -> Tensor {
        let mut total: Option<Tensor> = None;
        for (name, out) in outputs {
            self.check(&format!("out.{name}"), out);
            let term = (*out * self.get(&format!("probe.{name}"))).unwrap().sum_all().unwrap();
            total = Some(match total {
                Some(t) => (t + term).unwrap(),
                None => term,
            });
        }
        let names: BTreeSet<String> = self.with_prefix("out.").into_keys().collect();
        let seen: BTreeSet<String> = outputs.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, seen, "{}: outputs compared", self.name);
        total.unwrap()
    }

    /// Checks the gradients of every trainable weight and the buffers after the forward pass,
    /// and that the model and the reference have exactly the same weights.
    fn check_store(&self, store: &ParamStore, grads: &candle_core::backprop::GradStore) {
        store.check_all_used(std::path::Path::new(self.name)).unwrap();
        let ours: BTreeSet<String> = store.entries().into_iter().map(|(n, _)| n).collect();
        let theirs: BTreeSet<String> = self.params().into_keys().collect();
        assert_eq!(ours, theirs, "{}: weight names", self.name);
        let trainable: BTreeSet<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
        let with_grad: BTreeSet<String> = self.with_prefix("grad.param.").into_keys().collect();
        assert_eq!(trainable, with_grad, "{}: trainable weights", self.name);
        for (name, var) in store.trainable() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", self.name));
            self.check(&format!("grad.param.{name}"), g);
        }
        for (name, entry) in store.entries() {
            if self.tensors.contains_key(&format!("state.{name}")) {
                self.check(&format!("state.{name}"), entry.var.as_tensor());
            }
        }
    }
}

fn store_for(g: &Golden) -> ParamStore {
    ParamStore::with_tensors(0, g.params(), &Device::Cpu)
}

#[test]
fn conv3d_and_max_pool3d_match_pytorch() {
    let g = Golden::load("conv3d");
    let x = g.var("x");
    let windows = [
        Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]),
        Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]),
        Window3d::new([1, 3, 3], [1, 2, 2], [0, 1, 1]),
        Window3d::new([5, 7, 7], [1, 2, 2], [2, 3, 3]),
        Window3d::new([3, 1, 1], [1, 1, 1], [1, 0, 0]),
        Window3d::new([1, 1, 1], [2, 2, 2], [0, 0, 0]),
    ];
    let weights: Vec<Var> = (0..windows.len()).map(|i| g.var(&format!("w{i}"))).collect();
    let mut outs: Vec<(String, Tensor)> = windows
        .iter()
        .zip(&weights)
        .enumerate()
        .map(|(i, (win, w))| (format!("y{i}"), conv3d(x.as_tensor(), w.as_tensor(), *win).unwrap()))
        .collect();
    outs.push(("pool".into(), max_pool3d(x.as_tensor(), Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1])).unwrap()));
    let refs: Vec<(&str, &Tensor)> = outs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let grads = g.probed(&refs).backward().unwrap();
    g.check("grad.in.x", grads.get(x.as_tensor()).unwrap());
    for (i, w) in weights.iter().enumerate() {
        g.check(&format!("grad.in.w{i}"), grads.get(w.as_tensor()).unwrap());
    }
}

fn check_i3d(name: &'static str, cfg: I3dConfig) {
    let g = Golden::load(name);
    let store = store_for(&g);
    let model = I3dResNet::new(&store.root(), &cfg).unwrap();
    let x = g.var("x");
    let y = model.forward_t(x.as_tensor(), true).unwrap();
    let grads = g.probed(&[("y", &y)]).backward().unwrap();
    g.check("grad.in.x", grads.get(x.as_tensor()).unwrap());
    g.check_store(&store, &grads);
}

#[test]
fn i3d_resnet18_modified_matches_pytorch() {
    check_i3d(
        "i3d_resnet18_modified",
        I3dConfig { depth: 18, width: 4, temporal: TemporalDownsampling::Modified, ..I3dConfig::default() },
    );
}

#[test]
fn i3d_resnet50_standard_matches_pytorch() {
    check_i3d(
        "i3d_resnet50_standard",
        I3dConfig { depth: 50, width: 4, temporal: TemporalDownsampling::Standard, ..I3dConfig::default() },
    );
}

fn small_vit() -> FrameVitConfig {
    FrameVitConfig {
        image_size: 32,
        patch_size: 8,
        in_channels: 1,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_ratio: 4.0,
        temporal_depth: 1,
        max_frames: 8,
        layer_norm_eps: 1e-6,
    }
}

#[test]
fn frame_vit_matches_pytorch() {
    let g = Golden::load("frame_vit");
    let store = store_for(&g);
    let model = FrameVit::new(&store.root(), &small_vit()).unwrap();
    let x = g.var("x");
    let y = model.forward(x.as_tensor()).unwrap();
    let grads = g.probed(&[("y", &y)]).backward().unwrap();
    g.check("grad.in.x", grads.get(x.as_tensor()).unwrap());
    g.check_store(&store, &grads);
}

fn check_video(name: &'static str, cfg: VideoConfig, drugs: usize, moas: usize, train: bool) {
    let g = Golden::load(name);
    let store = store_for(&g);
    let model = VideoModel::new(&store.root(), &cfg, drugs, moas).unwrap();
    let x = g.var("x");
    let out = model.forward_t(x.as_tensor(), train).unwrap();
    let mut outs = vec![
        ("time_features", &out.time_features),
        ("attention", &out.attention),
        ("feature", &out.feature),
        ("neck_feature", &out.neck_feature),
    ];
    if let Some(l) = &out.drug_logits {
        outs.push(("drug_logits", l));
    }
    if let Some(l) = &out.moa_logits {
        outs.push(("moa_logits", l));
    }
    let grads = g.probed(&outs).backward().unwrap();
    g.check("grad.in.x", grads.get(x.as_tensor()).unwrap());
    g.check_store(&store, &grads);
}

#[test]
fn video_model_with_attention_pooling_matches_pytorch() {
    let cfg = VideoConfig {
        encoder: VideoEncoderKind::FrameVit,
        pooling: Pooling::Attention,
        vit: small_vit(),
        ..Default::default()
    };
    check_video("video_attention", cfg, 5, 3, true);
}

#[test]
fn video_model_with_mean_pooling_in_evaluation_matches_pytorch() {
    let i3d = I3dConfig { width: 4, ..I3dConfig::default() };
    let cfg = VideoConfig { encoder: VideoEncoderKind::I3dResnet18, pooling: Pooling::Mean, i3d, ..Default::default() };
    check_video("video_mean_eval", cfg, 5, 0, false);
}

#[test]
fn gin_matches_pytorch_on_real_molecules() {
    let g = Golden::load("gin");
    let smiles = ["CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "C[C@H](N)C(=O)O", "O=C(O)c1ccc(Cl)cc1"];
    let molecules: Vec<_> = smiles.iter().map(|s| molclip_chem::Molecule::parse(s).unwrap()).collect();
    let graphs: Vec<_> = molecules.iter().map(|m| m.graph()).collect();
    let batch = GraphBatch::new(&graphs, &Device::Cpu).unwrap();
    // The batch molclip-chem builds is the one the reference computed from RDKit.
    let (atoms, src, dst, bonds, graph_of_atom) = batch.arrays().unwrap();
    for (key, ours) in
        [("atoms", atoms), ("src", src), ("dst", dst), ("bonds", bonds), ("graph_of_atom", graph_of_atom)]
    {
        g.check(&format!("in.{key}"), &ours.to_dtype(DType::I64).unwrap());
    }
    let store = store_for(&g);
    let model = Gin::new(&store.root(), &GinConfig { hidden: 16, layers: 3 }).unwrap();
    let y = model.forward_t(&batch, true).unwrap();
    let grads = g.probed(&[("y", &y)]).backward().unwrap();
    g.check_store(&store, &grads);
}

#[test]
fn morgan_mlp_and_projection_match_pytorch() {
    let g = Golden::load("morgan_mlp");
    let store = store_for(&g);
    let model =
        MorganMlp::new(&store.root(), &MorganMlpConfig { bits: 64, hidden: 16, layers: 3, ..Default::default() })
            .unwrap();
    let fp = g.var("fp");
    let y = model.forward(fp.as_tensor()).unwrap();
    let grads = g.probed(&[("y", &y)]).backward().unwrap();
    g.check("grad.in.fp", grads.get(fp.as_tensor()).unwrap());
    g.check_store(&store, &grads);

    let g = Golden::load("projection");
    let store = store_for(&g);
    let head = Projection::new(&store.root().pp("linear"), 12, 8).unwrap();
    let x = g.var("x");
    let y = head.forward(x.as_tensor()).unwrap();
    let grads = g.probed(&[("y", &y)]).backward().unwrap();
    g.check("grad.in.x", grads.get(x.as_tensor()).unwrap());
    g.check_store(&store, &grads);
}

#[test]
fn triplet_cross_entropy_and_center_losses_match_pytorch() {
    let g = Golden::load("triplet");
    let f = g.var("features");
    let loss = batch_hard_triplet(f.as_tensor(), &g.labels("labels"), 0.3).unwrap();
    let grads = g.probed(&[("loss", &loss)]).backward().unwrap();
    g.check("grad.in.features", grads.get(f.as_tensor()).unwrap());

    let g = Golden::load("cross_entropy");
    let logits = g.var("logits");
    let loss = cross_entropy(logits.as_tensor(), &g.labels("labels"), 0.1).unwrap();
    let grads = g.probed(&[("loss", &loss)]).backward().unwrap();
    g.check("grad.in.logits", grads.get(logits.as_tensor()).unwrap());

    let g = Golden::load("center");
    let f = g.var("features");
    let mut centers = HashMap::new();
    centers.insert("centers".to_string(), g.get("in.centers").clone());
    let store = ParamStore::with_tensors(0, centers, &Device::Cpu);
    let center = CenterLoss::new(&store.root(), 3, 6).unwrap();
    let loss = center.forward(f.as_tensor(), &g.labels("labels")).unwrap();
    let grads = g.probed(&[("loss", &loss)]).backward().unwrap();
    g.check("grad.in.features", grads.get(f.as_tensor()).unwrap());
    g.check("grad.in.centers", grads.get(store.get("centers").unwrap().as_tensor()).unwrap());
}

#[test]
fn multi_positive_clip_loss_matches_pytorch_with_and_without_clamp() {
    for name in ["clip", "clip_clamped"] {
        let g = Golden::load(name);
        let (v, m, s) = (g.var("videos"), g.var("molecules"), g.var("logit_scale"));
        let loss = clip_loss(
            v.as_tensor(),
            m.as_tensor(),
            &g.labels("video_drugs"),
            &g.labels("molecule_drugs"),
            s.as_tensor(),
            100.0,
        )
        .unwrap();
        let grads = g.probed(&[("loss", &loss)]).backward().unwrap();
        g.check("grad.in.videos", grads.get(v.as_tensor()).unwrap());
        g.check("grad.in.molecules", grads.get(m.as_tensor()).unwrap());
        g.check("grad.in.logit_scale", grads.get(s.as_tensor()).unwrap());
    }
}

#[test]
fn combined_loss_matches_pytorch() {
    let g = Golden::load("combined");
    let (v, m, s, f, logits) =
        (g.var("videos"), g.var("molecules"), g.var("logit_scale"), g.var("features"), g.var("logits"));
    let mut centers = HashMap::new();
    centers.insert("center_loss.centers".to_string(), g.get("in.centers").clone());
    let store = ParamStore::with_tensors(0, centers, &Device::Cpu);
    let cfg = LossConfig { center: 0.01, ..LossConfig::default() };
    let criterion = Criterion::new(&store.root(), &cfg, 3, 6).unwrap();
    let labels = g.labels("video_drugs");
    let mol_drugs = g.labels("molecule_drugs");
    let clip = ClipInputs {
        videos: v.as_tensor(),
        molecules: m.as_tensor(),
        video_drugs: &labels,
        molecule_drugs: &mol_drugs,
        logit_scale: s.as_tensor(),
        max_logit_scale: 100.0,
    };
    let metric = MetricInputs { feature: f.as_tensor(), logits: Some(logits.as_tensor()), labels: &labels };
    let terms = criterion.forward(&metric, Some(&clip)).unwrap();
    let names: Vec<&str> = terms.terms.iter().map(|(n, _)| n.name()).collect();
    assert_eq!(names, ["clip", "triplet", "ce", "center"]);
    let grads = g.probed(&[("loss", &terms.total)]).backward().unwrap();
    for key in ["videos", "molecules", "logit_scale", "features", "logits"] {
        let var = match key {
            "videos" => &v,
            "molecules" => &m,
            "logit_scale" => &s,
            "features" => &f,
            _ => &logits,
        };
        g.check(&format!("grad.in.{key}"), grads.get(var.as_tensor()).unwrap());
    }
    g.check("grad.in.centers", grads.get(store.get("center_loss.centers").unwrap().as_tensor()).unwrap());
}
