//! Inflated 3D ResNet (I3D-ResNet), the video encoder of MitoReID.
//!
//! Carreira & Zisserman, "Quo Vadis, Action Recognition?" (CVPR 2017) for the inflation;
//! He et al., "Deep Residual Learning" (CVPR 2016) for the ResNet; the weight names follow
//! torchvision's `resnet18` / `resnet50` (`layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`).
//! Inflation as in the I3D ResNets: the stem is 5×7×7, the first convolution of each block is
//! temporal (3×3×3 in basic blocks, 3×1×1 in bottlenecks), the others are 1×k×k.
//!
//! MitoReID's *modified* variant halves time only in the first two downsampling stages (the
//! stem's pooling and `layer2`), keeping 4 time steps out of 16; the *standard* one also halves
//! it in `layer3` and `layer4`, which costs about 7 mAP points there.
//!
//! The `r3d` block style is the network MitoReID itself trains, kenshohara's 3D ResNet
//! (3D-ResNets-PyTorch, the Kinetics-pretrained weights it starts from): a 7×7×7 stem, full
//! 3×3×3 convolutions (the middle one of a bottleneck), 1×1×1 elsewhere. Its weights import
//! with `molclip weights import-i3d`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{conv3d, BatchNorm, Init, Vb, Window3d};

/// Where time is downsampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TemporalDownsampling {
    /// Stem pooling and `layer2` only (MitoReID).
    #[default]
    Modified,
    /// Stem pooling and `layer2`..`layer4`.
    Standard,
}

/// Which convolutions a block is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BlockStyle {
    /// Inflated: a 5×7×7 stem; a temporal first convolution (3×3×3 in basic blocks, 3×1×1 in
    /// bottlenecks), 1×k×k after it.
    #[default]
    Inflated,
    /// kenshohara's 3D ResNet (MitoReID's network): a 7×7×7 stem; 3×3×3 convolutions in basic
    /// blocks and in the middle of bottlenecks (which are 1×1×1 - 3×3×3 - 1×1×1).
    R3d,
}

impl BlockStyle {
    /// The stem's kernel and padding.
    fn stem(self) -> Window3d {
        match self {
            BlockStyle::Inflated => Window3d::new([5, 7, 7], [1, 2, 2], [2, 3, 3]),
            BlockStyle::R3d => Window3d::new([7, 7, 7], [1, 2, 2], [3, 3, 3]),
        }
    }

    /// A bottleneck's three convolutions; `(st, ss)` its stride.
    fn bottleneck(self, (st, ss): (usize, usize)) -> [Window3d; 3] {
        let one = Window3d::new([1, 1, 1], [1, 1, 1], [0, 0, 0]);
        match self {
            BlockStyle::Inflated => {
                [Window3d::new([3, 1, 1], [1, 1, 1], [1, 0, 0]), Window3d::new([1, 3, 3], [st, ss, ss], [0, 1, 1]), one]
            }
            BlockStyle::R3d => [one, Window3d::new([3, 3, 3], [st, ss, ss], [1, 1, 1]), one],
        }
    }

    /// A basic block's two convolutions; `(st, ss)` its stride.
    fn basic(self, (st, ss): (usize, usize)) -> [Window3d; 2] {
        let first = Window3d::new([3, 3, 3], [st, ss, ss], [1, 1, 1]);
        match self {
            BlockStyle::Inflated => [first, Window3d::new([1, 3, 3], [1, 1, 1], [0, 1, 1])],
            BlockStyle::R3d => [first, Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1])],
        }
    }
}

/// An inflated 3D ResNet's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct I3dConfig {
    /// 18, 34 (basic blocks) or 50 (bottlenecks). Set by the encoder's name
    /// (`i3d-resnet18`, `i3d-resnet50`) in a model config.
    #[serde(skip)]
    pub depth: usize,
    /// Image channels (1 for a single fluorescence channel).
    pub in_channels: usize,
    /// Channels of the stem and `layer1`; doubled at each later stage. ResNet uses 64.
    pub width: usize,
    /// Where time is halved.
    pub temporal: TemporalDownsampling,
    /// `inflated` (default) or `r3d` (kenshohara's 3D ResNet, MitoReID's network).
    pub blocks: BlockStyle,
}

impl Default for I3dConfig {
    fn default() -> Self {
        Self {
            depth: 18,
            in_channels: 1,
            width: 64,
            temporal: TemporalDownsampling::Modified,
            blocks: BlockStyle::Inflated,
        }
    }
}

impl I3dConfig {
    /// ResNet-18 blocks (2, 2, 2, 2), basic blocks.
    pub fn resnet18() -> Self {
        Self::default()
    }

    /// ResNet-50 blocks (3, 4, 6, 3), bottlenecks.
    pub fn resnet50() -> Self {
        Self { depth: 50, ..Self::default() }
    }

    fn blocks(&self) -> Result<(&'static [usize; 4], bool)> {
        match self.depth {
            18 => Ok((&[2, 2, 2, 2], false)),
            34 => Ok((&[3, 4, 6, 3], false)),
            50 => Ok((&[3, 4, 6, 3], true)),
            d => Err(ModelError::config("i3d.depth", format!("{d} is not one of 18, 34, 50"))),
        }
    }

    /// Refuses shapes that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.blocks()?;
        if self.in_channels == 0 || self.width == 0 {
            return Err(ModelError::config("i3d.width", "in_channels and width must be positive"));
        }
        Ok(())
    }

    /// Size of the feature of each remaining time step.
    pub fn out_dim(&self) -> usize {
        let expansion = if self.depth >= 50 { 4 } else { 1 };
        self.width * 8 * expansion
    }

    fn time_strides(&self) -> [usize; 4] {
        match self.temporal {
            TemporalDownsampling::Modified => [1, 2, 1, 1],
            TemporalDownsampling::Standard => [1, 2, 2, 2],
        }
    }
}

/// Convolution (no bias) followed by batch norm, the unit every block is made of.
#[derive(Clone, Debug)]
struct ConvBn {
    weight: Tensor,
    window: Window3d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(vb_conv: &Vb, vb_bn: &Vb, c_in: usize, c_out: usize, window: Window3d) -> Result<Self> {
        let [kt, kh, kw] = window.kernel;
        let init = Init::pytorch_default(c_in * kt * kh * kw);
        let weight = vb_conv.param("weight", &[c_out, c_in, kt, kh, kw], init)?;
        Ok(Self { weight, window, bn: BatchNorm::new(vb_bn, c_out)? })
    }

    fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let y = conv3d(x, &self.weight, self.window)?;
        if relu {
            Ok(self.bn.forward_relu_t(&y, train)?)
        } else {
            Ok(self.bn.forward_t(&y, train)?)
        }
    }

    /// max_pool3d(relu(conv + batch norm)), the stem and its pool, in one op after the
    /// convolution.
    fn forward_max_pool_t(&self, x: &Tensor, train: bool, pool: Window3d) -> Result<Tensor> {
        Ok(self.bn.forward_relu_max_pool_t(&conv3d(x, &self.weight, self.window)?, train, pool)?)
    }

    /// relu(conv + batch norm + shortcut), the end of a residual block, in one op after the
    /// convolution.
    fn forward_add_relu_t(&self, x: &Tensor, shortcut: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.bn.forward_add_relu_t(&conv3d(x, &self.weight, self.window)?, shortcut, train)?)
    }
}

#[derive(Clone, Debug)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    /// `stride`: (time, space) stride of the block.
    fn new(
        vb: &Vb,
        c_in: usize,
        planes: usize,
        stride: (usize, usize),
        bottleneck: bool,
        style: BlockStyle,
    ) -> Result<Self> {
        let (st, ss) = stride;
        let c_out = if bottleneck { planes * 4 } else { planes };
        let conv = |i: usize, c_in: usize, c_out: usize, window: Window3d| {
            ConvBn::new(&vb.pp(format!("conv{i}")), &vb.pp(format!("bn{i}")), c_in, c_out, window)
        };
        let convs = if bottleneck {
            let [w1, w2, w3] = style.bottleneck(stride);
            vec![conv(1, c_in, planes, w1)?, conv(2, planes, planes, w2)?, conv(3, planes, c_out, w3)?]
        } else {
            let [w1, w2] = style.basic(stride);
            vec![conv(1, c_in, planes, w1)?, conv(2, planes, c_out, w2)?]
        };
        let downsample = if c_in != c_out || st != 1 || ss != 1 {
            let ds = vb.pp("downsample");
            Some(ConvBn::new(&ds.pp(0), &ds.pp(1), c_in, c_out, Window3d::new([1, 1, 1], [st, ss, ss], [0, 0, 0]))?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward_t(x, train, false)?,
            None => x.clone(),
        };
        let (last, first) = self.convs.split_last().expect("a block has two or three convolutions");
        let mut y = x.clone();
        for conv in first {
            y = conv.forward_t(&y, train, true)?;
        }
        last.forward_add_relu_t(&y, &shortcut, train)
    }
}

/// I3D-ResNet: `[B, C, T, H, W]` videos to one feature per remaining time step.
#[derive(Clone, Debug)]
pub struct I3dResNet {
    stem: ConvBn,
    pool: Window3d,
    layers: Vec<Vec<Block>>,
    out_dim: usize,
}

impl I3dResNet {
    /// The network, its weights under `vb` (kenshohara's names).
    pub fn new(vb: &Vb, cfg: &I3dConfig) -> Result<Self> {
        cfg.validate()?;
        let (blocks, bottleneck) = cfg.blocks()?;
        let stem = ConvBn::new(&vb.pp("conv1"), &vb.pp("bn1"), cfg.in_channels, cfg.width, cfg.blocks.stem())?;
        let pool = Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut c_in = cfg.width;
        let mut layers = Vec::new();
        for (stage, (&n, &st)) in blocks.iter().zip(cfg.time_strides().iter()).enumerate() {
            let planes = cfg.width << stage;
            let ss = if stage == 0 { 1 } else { 2 };
            let vb_layer = vb.pp(format!("layer{}", stage + 1));
            let mut layer = Vec::new();
            for i in 0..n {
                let stride = if i == 0 { (st, ss) } else { (1, 1) };
                layer.push(Block::new(&vb_layer.pp(i), c_in, planes, stride, bottleneck, cfg.blocks)?);
                c_in = planes * expansion;
            }
            layers.push(layer);
        }
        Ok(Self { stem, pool, layers, out_dim: cfg.out_dim() })
    }

    /// Feature width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x`: `[B, C, T, H, W]`. Returns `[B, T', D]`: the feature map averaged over space.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.stem.forward_max_pool_t(x, train, self.pool)?;
        for layer in &self.layers {
            for block in layer {
                y = block.forward_t(&y, train)?;
            }
        }
        // [B, D, T', H', W'] -> [B, T', D]
        Ok(y.mean(4)?.mean(3)?.transpose(1, 2)?.contiguous()?)
    }
}

/// Maps a pretrained 3D ResNet onto an I3D-ResNet of `cfg`, its names under `prefix`:
/// kenshohara's 3D-ResNets-PyTorch names (`conv1.weight`, `bn1.running_mean`,
/// `layer1.0.conv2.weight`, `layer1.0.downsample.0.weight`), as MitoReID loads its
/// Kinetics-pretrained ResNet-50, with DataParallel's `module.` prefix stripped. The
/// classifier (`fc.*`) is dropped. Where the stem's input
/// channels differ from `cfg.in_channels`, its kernel is summed over them (one channel) or
/// their mean is repeated and scaled by 3/C (C channels), so a grey frame seen as R = G = B
/// gives the same response. Shapes are checked when the network is built from the result.
pub fn adapt_pretrained_r3d(
    tensors: &std::collections::HashMap<String, Tensor>,
    cfg: &I3dConfig,
    prefix: &str,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut out = std::collections::HashMap::new();
    for (name, t) in tensors {
        let name = name.strip_prefix("module.").unwrap_or(name);
        if name.starts_with("fc.") {
            continue;
        }
        let t = if name == "conv1.weight" { stem_channels(t, cfg.in_channels)? } else { t.clone() };
        // Weights and statistics as f32 (checkpoints may hold f16 or f64); counters stay integers.
        let t = if t.dtype().is_float() { t.to_dtype(candle_core::DType::F32)? } else { t };
        out.insert(format!("{prefix}{name}"), t);
    }
    if !out.contains_key(&format!("{prefix}conv1.weight")) {
        return Err(ModelError::Weights {
            what: "pretrained 3D ResNet".into(),
            message: "no `conv1.weight`: not a 3D ResNet state dict (kenshohara's names expected)".into(),
        });
    }
    Ok(out)
}

/// The stem's kernel `[O, C, T, H, W]` for `channels` input channels.
fn stem_channels(w: &Tensor, channels: usize) -> Result<Tensor> {
    let have = w.dim(1)?;
    Ok(match (have, channels) {
        (a, b) if a == b => w.clone(),
        (_, 1) => w.sum_keepdim(1)?,
        (a, b) => (w.mean_keepdim(1)?.repeat((1, b, 1, 1, 1))? * (a as f64 / b as f64))?,
    })
}
