//! `molclip weights import-i3d`: a checkpoint in the exact format MitoReID starts from
//! (kenshohara's 3D-ResNets-PyTorch Kinetics checkpoints: a `.pth` zip, the state dict under
//! `state_dict`, DataParallel's `module.` names), written by `python/make_r3d_checkpoint.py`
//! from random weights, gives the same features in molclip as in PyTorch; and its 3-channel
//! stem summed to one channel sees a grey video as PyTorch sees it in RGB.

use std::path::PathBuf;

use candle_core::Tensor;
use molclip::models::{adapt_pretrained_r3d, BlockStyle, I3dConfig, I3dResNet, TemporalDownsampling};
use molclip::nn::{read_safetensors, read_weights, ParamStore};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// The network of the checkpoint, with `channels` input channels, from the imported weights.
fn imported(channels: usize) -> I3dResNet {
    let cfg = I3dConfig {
        depth: 50,
        in_channels: channels,
        width: 4,
        temporal: TemporalDownsampling::Modified,
        blocks: BlockStyle::R3d,
    };
    let pth = golden("r3d50_kinetics_format.pth");
    let tensors = read_weights(&pth).unwrap();
    assert!(tensors.keys().all(|k| k.starts_with("module.")), "the checkpoint keeps DataParallel's names");
    let mapped = adapt_pretrained_r3d(&tensors, &cfg, "").unwrap();
    assert!(!mapped.keys().any(|k| k.starts_with("fc.")), "the classifier is dropped");
    let store = ParamStore::with_tensors(0, mapped, &candle_core::Device::Cpu);
    let net = I3dResNet::new(&store.root(), &cfg).unwrap();
    // Strict: every tensor used, none of the network's initialised instead.
    store.check_all_used(&pth).unwrap();
    assert_eq!(store.missing_under(""), Vec::<String>::new());
    net
}

fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}");
    let diff =
        (ours - theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = theirs.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-4 * scale.max(1.0), "{what}: max difference {diff} at scale {scale}");
}

#[test]
fn a_kinetics_format_checkpoint_gives_pytorchs_features() {
    let reference = read_safetensors(&golden("r3d50_features.safetensors")).unwrap();
    let features = imported(3).forward_t(&reference["in.rgb"], false).unwrap();
    assert_close(&features, &reference["out.rgb"], "RGB input");
}

#[test]
fn a_single_channel_stem_sums_the_rgb_kernel() {
    let reference = read_safetensors(&golden("r3d50_features.safetensors")).unwrap();
    let features = imported(1).forward_t(&reference["in.grey"], false).unwrap();
    assert_close(&features, &reference["out.grey"], "grey input as R = G = B");
}

#[test]
fn weights_of_another_network_are_refused() {
    // A ResNet-18 config cannot take ResNet-50 weights: the build fails on a shape, or the
    // check finds unused tensors.
    let cfg = I3dConfig { depth: 18, in_channels: 3, width: 4, blocks: BlockStyle::R3d, ..I3dConfig::default() };
    let tensors = read_weights(&golden("r3d50_kinetics_format.pth")).unwrap();
    let mapped = adapt_pretrained_r3d(&tensors, &cfg, "").unwrap();
    let store = ParamStore::with_tensors(0, mapped, &candle_core::Device::Cpu);
    let refused = I3dResNet::new(&store.root(), &cfg).is_err()
        || store.check_all_used(&golden("r3d50_kinetics_format.pth")).is_err();
    assert!(refused);
    let e = adapt_pretrained_r3d(&std::collections::HashMap::new(), &cfg, "").unwrap_err().to_string();
    assert!(e.contains("conv1.weight"), "{e}");
}
