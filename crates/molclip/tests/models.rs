//! Shapes, initialisation, weights on disk, freezing, configs and pretrained ViT import.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use molclip::models::{
    adapt_pretrained_vit, FrameVit, FrameVitConfig, GinConfig, I3dConfig, MolClip, MolClipConfig, MoleculeConfig,
    MoleculeEncoderKind, MoleculeInput, MorganMlpConfig, Pooling, TemporalDownsampling, VideoConfig, VideoEncoderKind,
    VideoModel,
};
use molclip::nn::ParamStore;
use molclip::ModelError;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn video(b: usize, t: usize, size: usize) -> Tensor {
    let n = b * t * size * size;
    let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0).collect();
    Tensor::from_vec(v, (b, t, 1, size, size), &Device::Cpu).unwrap()
}

fn small_i3d(temporal: TemporalDownsampling) -> VideoConfig {
    VideoConfig {
        encoder: VideoEncoderKind::I3dResnet18,
        i3d: I3dConfig { width: 4, temporal, ..I3dConfig::default() },
        ..Default::default()
    }
}

fn small_vit() -> VideoConfig {
    let vit =
        FrameVitConfig { image_size: 32, patch_size: 8, dim: 16, depth: 1, heads: 2, ..FrameVitConfig::default() };
    VideoConfig { encoder: VideoEncoderKind::FrameVit, vit, ..Default::default() }
}

#[test]
fn video_models_have_the_documented_shapes() {
    // 16 frames: the modified I3D keeps 4 time steps, the standard one 1; the ViT keeps all.
    for (cfg, steps) in [
        (small_i3d(TemporalDownsampling::Modified), 4),
        (small_i3d(TemporalDownsampling::Standard), 1),
        (small_vit(), 16),
    ] {
        let store = ParamStore::new(0, &Device::Cpu);
        let model = VideoModel::new(&store.root(), &cfg, 7, 3).unwrap();
        let out = model.forward_t(&video(3, 16, 32), true).unwrap();
        let d = cfg.feature_dim();
        assert_eq!(out.time_features.dims(), &[3, steps, d], "{:?}", cfg.encoder);
        assert_eq!(out.attention.dims(), &[3, steps]);
        assert_eq!(out.feature.dims(), &[3, d]);
        assert_eq!(out.neck_feature.dims(), &[3, d]);
        assert_eq!(out.drug_logits.as_ref().unwrap().dims(), &[3, 7]);
        assert_eq!(out.moa_logits.as_ref().unwrap().dims(), &[3, 3]);
        for row in out.attention.to_vec2::<f32>().unwrap() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "attention weights sum to 1");
            assert!(row.iter().all(|w| *w > 0.0));
        }
        // Every trainable weight gets a gradient (none is left out of the graph).
        let grads = (out.feature.sum_all().unwrap()
            + out.drug_logits.unwrap().sum_all().unwrap()
            + out.moa_logits.unwrap().sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
        for (name, var) in store.trainable() {
            assert!(grads.get(var.as_tensor()).is_some(), "{name} has no gradient");
        }
    }
}

#[test]
fn mean_pooling_weighs_time_steps_equally() {
    let mut cfg = small_vit();
    cfg.pooling = Pooling::Mean;
    let store = ParamStore::new(0, &Device::Cpu);
    let model = VideoModel::new(&store.root(), &cfg, 0, 0).unwrap();
    let out = model.forward_t(&video(2, 5, 32), false).unwrap();
    let mean = out.time_features.mean(1).unwrap();
    let diff = values(&(mean - &out.feature).unwrap().abs().unwrap()).into_iter().fold(0f32, f32::max);
    assert!(diff < 1e-5);
    assert!(out.drug_logits.is_none() && out.moa_logits.is_none());
}

#[test]
fn initialisation_follows_pytorch_defaults() {
    let store = ParamStore::new(3, &Device::Cpu);
    let cfg = MolClipConfig { video: small_i3d(TemporalDownsampling::Modified), ..Default::default() };
    MolClip::new(&store.root(), &cfg, 10, 4).unwrap();
    let get = |n: &str| values(store.get(n).unwrap().as_tensor());
    // nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weights and bias.
    let check_uniform = |name: &str, fan_in: usize| {
        let v = get(name);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max <= bound && max > 0.9 * bound, "{name}: max {max} vs bound {bound}");
        let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.15, "{name}: variance {var}");
    };
    check_uniform("video_projection.weight", 32);
    check_uniform("video_projection.bias", 32);
    // nn.Conv3d: fan_in = in_channels * kt * kh * kw.
    check_uniform("video.encoder.conv1.weight", 5 * 7 * 7);
    check_uniform("video.encoder.layer1.0.conv1.weight", 4 * 27);
    // Batch norm: weight 1, bias 0, running statistics 0 and 1.
    assert!(get("video.encoder.bn1.weight").iter().all(|&x| x == 1.0));
    assert!(get("video.encoder.bn1.bias").iter().all(|&x| x == 0.0));
    assert!(get("video.encoder.bn1.running_var").iter().all(|&x| x == 1.0));
    // CLIP's temperature: logit_scale = ln(1/0.07).
    assert!((get("logit_scale")[0] - (1.0f32 / 0.07).ln()).abs() < 1e-6);
    // GIN embeddings: Xavier uniform, as OGB.
    let emb = get("molecule.atom_encoder.atom_embedding_list.0.weight");
    let bound = (6.0f32 / (119.0 + 256.0)).sqrt();
    assert!(emb.iter().all(|x| x.abs() <= bound));
    // The BNNeck bias is kept at zero and not trained.
    assert!(store.trainable().iter().all(|(n, _)| n != "video.neck.bias"));
    assert!(store.get("video.neck.bias").is_some());
}

#[test]
fn the_seed_fixes_every_weight_and_each_weight_has_its_own_stream() {
    let build = |seed: u64, extra: bool| {
        let store = ParamStore::new(seed, &Device::Cpu);
        let vb = store.root();
        if extra {
            // Building another module first must not change the video model's weights.
            VideoModel::new(&vb.pp("other"), &small_vit(), 3, 0).unwrap();
        }
        VideoModel::new(&vb.pp("m"), &small_i3d(TemporalDownsampling::Modified), 5, 0).unwrap();
        store
    };
    let (a, b, c) = (build(1, false), build(1, true), build(2, false));
    for (name, var) in a.entries() {
        let w = values(var.var.as_tensor());
        assert_eq!(w, values(b.get(&name).unwrap().as_tensor()), "{name}");
        if name.ends_with("conv1.weight") {
            assert_ne!(w, values(c.get(&name).unwrap().as_tensor()), "{name}");
        }
    }
}

fn small_molclip(encoder: MoleculeEncoderKind, freeze: bool) -> MolClipConfig {
    let molecule = MoleculeConfig {
        encoder,
        freeze,
        freeze_projection: false,
        gin: GinConfig { hidden: 8, layers: 2 },
        morgan: MorganMlpConfig { bits: 128, hidden: 8, layers: 2, ..Default::default() },
    };
    MolClipConfig { video: small_vit(), molecule, projection_dim: 6, ..Default::default() }
}

fn molecules(cfg: &MolClipConfig) -> MoleculeInput {
    let mols: Vec<_> =
        ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"].iter().map(|s| molclip_chem::Molecule::parse(s).unwrap()).collect();
    let refs: Vec<_> = mols.iter().collect();
    MoleculeInput::new(&cfg.molecule, &refs, &Device::Cpu).unwrap()
}

#[test]
fn weights_round_trip_through_safetensors_and_mismatches_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    for encoder in [MoleculeEncoderKind::Gin, MoleculeEncoderKind::MorganMlp] {
        let cfg = small_molclip(encoder, false);
        let store = ParamStore::new(11, &Device::Cpu);
        let model = MolClip::new(&store.root(), &cfg, 4, 2).unwrap();
        // One training step moves the running statistics, so that they are worth saving.
        model.encode_videos(&video(2, 4, 32), true).unwrap();
        let (_, v1) = model.encode_videos(&video(2, 4, 32), false).unwrap();
        let m1 = model.encode_molecules(&molecules(&cfg), false).unwrap();
        store.save(&path).unwrap();

        let loaded = ParamStore::load(&path, &Device::Cpu).unwrap();
        let again = MolClip::new(&loaded.root(), &cfg, 4, 2).unwrap();
        loaded.check_all_used(std::path::Path::new("model.safetensors")).unwrap();
        let (_, v2) = again.encode_videos(&video(2, 4, 32), false).unwrap();
        let m2 = again.encode_molecules(&molecules(&cfg), false).unwrap();
        assert_eq!(values(&v1), values(&v2));
        assert_eq!(values(&m1), values(&m2));
        // Embeddings are unit vectors in the shared space.
        for row in v2.to_vec2::<f32>().unwrap().iter().chain(m2.to_vec2::<f32>().unwrap().iter()) {
            assert!((row.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    // A checkpoint of another architecture: the extra names are reported.
    let cfg = small_molclip(MoleculeEncoderKind::MorganMlp, false);
    let store = ParamStore::load(&path, &Device::Cpu).unwrap();
    let err =
        MolClip::new(&store.root(), &small_molclip(MoleculeEncoderKind::Gin, false), 4, 2).unwrap_err().to_string();
    assert!(err.contains("molecule.atom_encoder") && err.contains("model.safetensors"), "{err}");
    let store = ParamStore::load(&path, &Device::Cpu).unwrap();
    let mut gin_cfg = cfg.clone();
    gin_cfg.molecule.morgan.layers = 1;
    MolClip::new(&store.root(), &gin_cfg, 4, 2).unwrap();
    let err = store.check_all_used(std::path::Path::new("model.safetensors")).unwrap_err().to_string();
    assert!(err.contains("molecule.mlp.2.weight"), "{err}");
    // A wrong shape names the weight and both shapes.
    let store = ParamStore::load(&path, &Device::Cpu).unwrap();
    let err = MolClip::new(&store.root(), &cfg, 5, 2).unwrap_err();
    assert!(
        matches!(&err, ModelError::Nn(molclip::nn::NnError::WeightShape { name, .. }) if name == "video.drug_classifier.weight"),
        "{err}"
    );
}

#[test]
fn a_frozen_molecule_encoder_is_not_trained() {
    let cfg = small_molclip(MoleculeEncoderKind::Gin, true);
    let store = ParamStore::new(0, &Device::Cpu);
    let model = MolClip::new(&store.root(), &cfg, 4, 2).unwrap();
    let names: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| !n.starts_with("molecule.")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("molecule_projection.")));
    let before = values(store.get("molecule.batch_norms.0.running_mean").unwrap().as_tensor());
    let m = model.encode_molecules(&molecules(&cfg), true).unwrap();
    let grads = m.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(store.get("molecule.convs.0.mlp.0.weight").unwrap().as_tensor()).is_none());
    // Frozen means evaluation mode too: running statistics stay put.
    assert_eq!(before, values(store.get("molecule.batch_norms.0.running_mean").unwrap().as_tensor()));

    // With the projection frozen too, the molecule side is a fixed space: only the video
    // side trains, and a molecule's embedding is the same before and after a step.
    let mut fixed = small_molclip(MoleculeEncoderKind::MorganMlp, true);
    fixed.molecule.freeze_projection = true;
    let store = ParamStore::new(0, &Device::Cpu);
    let model = MolClip::new(&store.root(), &fixed, 4, 2).unwrap();
    let names: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| !n.starts_with("molecule")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("video_projection.")), "{names:?}");
    let m = model.encode_molecules(&molecules(&fixed), true).unwrap();
    let grads = m.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(store.get("molecule_projection.weight").unwrap().as_tensor()).is_none());
}

#[test]
fn configs_name_the_field_that_is_wrong() {
    let err =
        toml::from_str::<MolClipConfig>("[video]\nencoder = \"i3d-resnet18\"\nwidht = 3\n").unwrap_err().to_string();
    assert!(err.contains("widht"), "{err}");
    let err = toml::from_str::<MolClipConfig>("[video]\nencoder = \"resnet\"\n").unwrap_err().to_string();
    assert!(err.contains("resnet") && err.contains("frame-vit"), "{err}");
    let cfg: MolClipConfig =
        toml::from_str("[video]\nencoder = \"frame-vit\"\n[video.vit]\ndim = 10\nheads = 3\n").unwrap();
    let err = MolClip::new(&ParamStore::new(0, &Device::Cpu).root(), &cfg, 2, 2).unwrap_err().to_string();
    assert!(err.contains("vit.heads"), "{err}");
    let cfg: MolClipConfig = toml::from_str("init_temperature = 0.001\n").unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("init_temperature"));
    // The defaults survive a round trip through TOML.
    let default = MolClipConfig::default();
    assert_eq!(toml::from_str::<MolClipConfig>(&toml::to_string(&default).unwrap()).unwrap(), default);
}

/// A ViT checkpoint with timm names (an RGB, 4×4-patch-grid model), and the same weights with
/// HuggingFace names, load into a one-channel frame ViT with another grid.
#[test]
fn pretrained_vits_load_from_timm_and_huggingface_names() {
    let rgb = FrameVitConfig {
        image_size: 32,
        patch_size: 8,
        in_channels: 3,
        dim: 16,
        depth: 2,
        heads: 2,
        ..FrameVitConfig::default()
    };
    let source = ParamStore::new(5, &Device::Cpu);
    FrameVit::new(&source.root(), &rgb).unwrap();
    let timm: HashMap<String, Tensor> =
        source.tensors().into_iter().filter(|(k, _)| !k.starts_with("temporal") && !k.starts_with("time")).collect();

    let ours = FrameVitConfig { image_size: 48, in_channels: 1, ..rgb.clone() };
    let adapted = adapt_pretrained_vit(&timm, &ours, "").unwrap();
    let store = ParamStore::with_tensors(0, adapted.clone(), &Device::Cpu);
    FrameVit::new(&store.root(), &ours).unwrap();
    store.check_all_used(std::path::Path::new("timm")).unwrap();
    // Colour channels summed: a grey frame gives the RGB model's patch tokens.
    let summed = timm["patch_embed.proj.weight"].sum_keepdim(1).unwrap();
    assert_eq!(values(&summed), values(store.get("patch_embed.proj.weight").unwrap().as_tensor()));
    assert_eq!(store.get("pos_embed").unwrap().dims(), &[1, 37, 16]);

    let mut hf = HashMap::new();
    let put = |hf: &mut HashMap<String, Tensor>, k: &str, v: Tensor| hf.insert(format!("vit.{k}"), v);
    put(&mut hf, "embeddings.patch_embeddings.projection.weight", timm["patch_embed.proj.weight"].clone());
    put(&mut hf, "embeddings.patch_embeddings.projection.bias", timm["patch_embed.proj.bias"].clone());
    put(&mut hf, "embeddings.cls_token", timm["cls_token"].clone());
    put(&mut hf, "embeddings.position_embeddings", timm["pos_embed"].clone());
    for i in 0..2 {
        let (o, l) = (format!("blocks.{i}."), format!("encoder.layer.{i}."));
        for (j, part) in ["query", "key", "value"].iter().enumerate() {
            put(
                &mut hf,
                &format!("{l}attention.attention.{part}.weight"),
                timm[&format!("{o}attn.qkv.weight")].narrow(0, 16 * j, 16).unwrap(),
            );
            put(
                &mut hf,
                &format!("{l}attention.attention.{part}.bias"),
                timm[&format!("{o}attn.qkv.bias")].narrow(0, 16 * j, 16).unwrap(),
            );
        }
        for (ours, theirs) in [
            ("attn.proj", "attention.output.dense"),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ] {
            for wb in ["weight", "bias"] {
                put(&mut hf, &format!("{l}{theirs}.{wb}"), timm[&format!("{o}{ours}.{wb}")].clone());
            }
        }
    }
    for wb in ["weight", "bias"] {
        put(&mut hf, &format!("layernorm.{wb}"), timm[&format!("norm.{wb}")].clone());
    }
    let from_hf = adapt_pretrained_vit(&hf, &ours, "").unwrap();
    assert_eq!(from_hf.len(), adapted.len());
    for (k, v) in &adapted {
        assert_eq!(values(v), values(&from_hf[k]), "{k}");
    }
    // A checkpoint of another width is refused with both widths named.
    let err = adapt_pretrained_vit(&timm, &FrameVitConfig { dim: 32, ..ours }, "").unwrap_err().to_string();
    assert!(err.contains("16") && err.contains("32"), "{err}");
}

#[test]
fn gin_handles_molecules_without_bonds() {
    let cfg = GinConfig { hidden: 8, layers: 2 };
    let store = ParamStore::new(0, &Device::Cpu);
    let gin = molclip::models::Gin::new(&store.root(), &cfg).unwrap();
    let mols: Vec<_> = ["[Na+]", "C"].iter().map(|s| molclip_chem::Molecule::parse(s).unwrap()).collect();
    let graphs: Vec<_> = mols.iter().map(|m| m.graph()).collect();
    let batch = molclip::models::GraphBatch::new(&graphs, &Device::Cpu).unwrap();
    let y = gin.forward_t(&batch, true).unwrap();
    assert_eq!(y.dims(), &[2, 8]);
    assert!(values(&y).iter().all(|v| v.is_finite()));
    assert!(molclip::models::GraphBatch::new(&[], &Device::Cpu).is_err());
}

/// Same seed, same numbers: two runs of training steps end with bitwise equal weights, on
/// two threads (parallel sums are added in a fixed order).
#[test]
fn training_steps_are_deterministic() {
    use molclip::losses::{batch_hard_triplet, cross_entropy};
    use molclip::optim::{Optimizer, OptimizerConfig};
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let run = || -> Vec<Vec<f32>> {
        pool.install(|| {
            let mut out = Vec::new();
            for cfg in [small_vit(), small_i3d(TemporalDownsampling::Modified)] {
                let store = ParamStore::new(9, &Device::Cpu);
                let model = VideoModel::new(&store.root(), &cfg, 3, 0).unwrap();
                let mut opt = Optimizer::new(store.trainable(), &OptimizerConfig::default()).unwrap();
                let labels = [0u32, 0, 1, 1, 2, 2];
                for _ in 0..2 {
                    let o = model.forward_t(&video(6, 8, 32), true).unwrap();
                    let loss = (cross_entropy(o.drug_logits.as_ref().unwrap(), &labels, 0.1).unwrap()
                        + batch_hard_triplet(&o.feature, &labels, 0.3).unwrap())
                    .unwrap();
                    opt.step(&loss.backward().unwrap(), 1e-3).unwrap();
                }
                out.extend(store.entries().into_iter().map(|(_, e)| values(e.var.as_tensor())));
            }
            out
        })
    };
    assert!(run() == run());
}
