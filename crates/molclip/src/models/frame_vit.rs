//! Frame ViT: a Vision Transformer on every frame, then a temporal transformer over the frames.
//!
//! Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021); the factorised
//! space-then-time design follows ViViT's model 2 (Arnab et al., ICCV 2021). Weight names
//! follow timm's `VisionTransformer` (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`),
//! so a timm ViT checkpoint loads after [`adapt_pretrained_vit`].

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{attention_of_first, gelu, Init, LayerNorm, Linear, Vb};

/// A ViT on each frame, then a temporal transformer over the frames' tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrameVitConfig {
    /// Frame size (square).
    pub image_size: usize,
    /// Patch size.
    pub patch_size: usize,
    /// Channels per frame.
    pub in_channels: usize,
    /// Token width.
    pub dim: usize,
    /// Transformer blocks applied to each frame.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width over model width.
    pub mlp_ratio: f64,
    /// Transformer blocks over the sequence of frame features.
    pub temporal_depth: usize,
    /// Length of the temporal position embedding: the most frames a video may have.
    pub max_frames: usize,
    /// Layer norms' epsilon.
    pub layer_norm_eps: f64,
}

impl Default for FrameVitConfig {
    fn default() -> Self {
        Self {
            image_size: 112,
            patch_size: 16,
            in_channels: 1,
            dim: 192,
            depth: 4,
            heads: 3,
            mlp_ratio: 4.0,
            temporal_depth: 1,
            max_frames: 32,
            layer_norm_eps: 1e-6,
        }
    }
}

impl FrameVitConfig {
    /// Refuses sizes that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::config(
                "vit.image_size",
                format!("{} is not a multiple of patch_size {}", self.image_size, self.patch_size),
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(ModelError::config(
                "vit.heads",
                format!("dim {} is not divisible by {} heads", self.dim, self.heads),
            ));
        }
        if self.mlp_ratio <= 0.0 || self.max_frames == 0 || self.depth == 0 {
            return Err(ModelError::config("vit", "mlp_ratio, max_frames and depth must be positive"));
        }
        Ok(())
    }

    fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    fn mlp_dim(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio).round() as usize
    }
}

/// Multi-head self-attention with a fused qkv projection.
#[derive(Clone, Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: &Vb, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            qkv: Linear::new(&vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::new(&vb.pp("proj"), dim, dim, true)?,
            heads,
        })
    }

    /// The outputs of the first `queries` tokens (all tokens' keys and values).
    fn forward_first(&self, x: &Tensor, queries: usize) -> Result<Tensor> {
        Ok(self.proj.forward(&attention_of_first(&self.qkv.forward(x)?, self.heads, queries)?)?)
    }
}

/// Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).
#[derive(Clone, Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(vb: &Vb, cfg: &FrameVitConfig) -> Result<Self> {
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), cfg.dim, eps)?,
            attn: Attention::new(&vb.pp("attn"), cfg.dim, cfg.heads)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), cfg.dim, eps)?,
            fc1: Linear::new(&vb.pp("mlp").pp("fc1"), cfg.dim, cfg.mlp_dim(), true)?,
            fc2: Linear::new(&vb.pp("mlp").pp("fc2"), cfg.mlp_dim(), cfg.dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_first(x, x.dim(1)?)
    }

    /// The block's output for the first `queries` tokens only, `[B, queries, D]`: the same
    /// values as [`Block::forward`]'s first rows. Past the attention's keys and values, each
    /// token's work is its own, so a block whose other outputs nobody reads (the last one,
    /// read through its class token) skips it.
    fn forward_first(&self, x: &Tensor, queries: usize) -> Result<Tensor> {
        let x = (x.narrow(1, 0, queries)? + self.attn.forward_first(&self.norm1.forward(x)?, queries)?)?;
        let h = gelu(&self.fc1.forward(&self.norm2.forward(&x)?)?)?;
        Ok((&x + self.fc2.forward(&h)?)?)
    }
}

/// ViT per frame + temporal transformer: `[B, T, C, H, W]` videos to `[B, T, D]` features.
#[derive(Clone, Debug)]
pub struct FrameVit {
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    time_embed: Tensor,
    temporal_blocks: Vec<Block>,
    temporal_norm: LayerNorm,
    cfg: FrameVitConfig,
}

impl FrameVit {
    /// The model, its weights under `vb` (timm names).
    pub fn new(vb: &Vb, cfg: &FrameVitConfig) -> Result<Self> {
        cfg.validate()?;
        let (p, c, d) = (cfg.patch_size, cfg.in_channels, cfg.dim);
        let tokens = cfg.grid() * cfg.grid() + 1;
        let patch = vb.pp("patch_embed").pp("proj");
        let init = Init::pytorch_default(c * p * p);
        Ok(Self {
            patch_weight: patch.param("weight", &[d, c, p, p], init)?,
            patch_bias: patch.param("bias", &[d], init)?,
            cls_token: vb.param("cls_token", &[1, 1, d], Init::TruncNormal(0.02))?,
            pos_embed: vb.param("pos_embed", &[1, tokens, d], Init::TruncNormal(0.02))?,
            blocks: (0..cfg.depth).map(|i| Block::new(&vb.pp("blocks").pp(i), cfg)).collect::<Result<_>>()?,
            norm: LayerNorm::new(&vb.pp("norm"), d, cfg.layer_norm_eps)?,
            time_embed: vb.param("time_embed", &[1, cfg.max_frames, d], Init::TruncNormal(0.02))?,
            temporal_blocks: (0..cfg.temporal_depth)
                .map(|i| Block::new(&vb.pp("temporal_blocks").pp(i), cfg))
                .collect::<Result<_>>()?,
            temporal_norm: LayerNorm::new(&vb.pp("temporal_norm"), d, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
        })
    }

    /// Feature width.
    pub fn out_dim(&self) -> usize {
        self.cfg.dim
    }

    /// Frame features before the temporal transformer: `[N, C, H, W]` frames to `[N, D]`.
    pub fn frame_features(&self, frames: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = frames.dims4()?;
        let (p, g, d) = (self.cfg.patch_size, self.cfg.grid(), self.cfg.dim);
        if h != self.cfg.image_size || w != self.cfg.image_size || c != self.cfg.in_channels {
            return Err(ModelError::Input(format!(
                "frame-vit expects {}x{}x{} frames, got {c}x{h}x{w}",
                self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size
            )));
        }
        // A stride-p convolution with a p×p kernel is a linear map of each patch.
        let patches =
            frames.reshape((n, c, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((n * g * g, c * p * p))?;
        // As a linear layer, so that the CPU runs it (and its backward pass) fused.
        let embed = Linear::from_tensors(self.patch_weight.reshape((d, c * p * p))?, Some(self.patch_bias.clone()));
        let tokens = embed.forward(&patches)?.reshape((n, g * g, d))?;
        let cls = self.cls_token.broadcast_as((n, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?;
        // Only the class token is read out of the last block: its other tokens' outputs are
        // not computed (a fifth of the frames' work at depth 4; the same features).
        let (last, blocks) =
            self.blocks.split_last().ok_or_else(|| ModelError::config("vit.depth", "must be positive"))?;
        for block in blocks {
            x = block.forward(&x)?;
        }
        Ok(self.norm.forward(&last.forward_first(&x, 1)?)?.squeeze(1)?)
    }

    /// `x`: `[B, T, C, H, W]`. Returns `[B, T, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        if t > self.cfg.max_frames {
            return Err(ModelError::Input(format!("{t} frames, more than vit.max_frames = {}", self.cfg.max_frames)));
        }
        let frames = self.frame_features(&x.reshape((b * t, c, h, w))?)?.reshape((b, t, self.cfg.dim))?;
        let mut y = frames.broadcast_add(&self.time_embed.narrow(1, 0, t)?)?;
        for block in &self.temporal_blocks {
            y = block.forward(&y)?;
        }
        Ok(self.temporal_norm.forward(&y)?)
    }
}

/// Maps a pretrained ViT state dict (timm `VisionTransformer` names, or HuggingFace
/// `ViTModel` names) onto a frame ViT's names under `prefix`:
/// - HuggingFace's separate query/key/value projections are fused into `qkv`;
/// - an RGB patch embedding is summed over its colour channels when the frame ViT takes one
///   channel (a grey image seen as R = G = B gives the same tokens);
/// - the position embedding is resampled (bilinear) when the patch grid differs.
///
/// The temporal blocks are not in such a checkpoint: they keep their initialisation.
pub fn adapt_pretrained_vit(
    tensors: &HashMap<String, Tensor>,
    cfg: &FrameVitConfig,
    prefix: &str,
) -> Result<HashMap<String, Tensor>> {
    let hf = tensors.keys().any(|k| k.contains("attention.attention.query"));
    let strip = |k: &str| -> String {
        for p in ["vit.", "model.", "module.", "visual.trunk.", "trunk."] {
            if let Some(s) = k.strip_prefix(p) {
                return s.to_string();
            }
        }
        k.to_string()
    };
    let src: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (strip(k), v.clone())).collect();
    let get = |k: &str| -> Result<Tensor> {
        src.get(k)
            .cloned()
            .ok_or_else(|| ModelError::Weights { what: "pretrained ViT".into(), message: format!("missing `{k}`") })
    };
    let mut out = HashMap::new();
    let put = |out: &mut HashMap<String, Tensor>, k: &str, v: Tensor| {
        out.insert(format!("{prefix}{k}"), v);
    };
    let (patch_w, patch_b, cls, pos) = if hf {
        (
            get("embeddings.patch_embeddings.projection.weight")?,
            get("embeddings.patch_embeddings.projection.bias")?,
            get("embeddings.cls_token")?,
            get("embeddings.position_embeddings")?,
        )
    } else {
        (get("patch_embed.proj.weight")?, get("patch_embed.proj.bias")?, get("cls_token")?, get("pos_embed")?)
    };
    let (d, c_src, p, _) = patch_w.dims4()?;
    if d != cfg.dim || p != cfg.patch_size {
        return Err(ModelError::Weights {
            what: "pretrained ViT".into(),
            message: format!(
                "width {d} and patch {p}, the config asks for dim {} and patch_size {}",
                cfg.dim, cfg.patch_size
            ),
        });
    }
    let patch_w = if c_src != cfg.in_channels && cfg.in_channels == 1 { patch_w.sum_keepdim(1)? } else { patch_w };
    put(&mut out, "patch_embed.proj.weight", patch_w);
    put(&mut out, "patch_embed.proj.bias", patch_b);
    put(&mut out, "cls_token", cls);
    put(&mut out, "pos_embed", resample_pos_embed(&pos, cfg.grid())?);
    for i in 0..cfg.depth {
        let o = format!("blocks.{i}.");
        if hf {
            let l = format!("encoder.layer.{i}.");
            let a = format!("{l}attention.attention.");
            let w = Tensor::cat(
                &[
                    get(&format!("{a}query.weight"))?,
                    get(&format!("{a}key.weight"))?,
                    get(&format!("{a}value.weight"))?,
                ],
                0,
            )?;
            let b = Tensor::cat(
                &[get(&format!("{a}query.bias"))?, get(&format!("{a}key.bias"))?, get(&format!("{a}value.bias"))?],
                0,
            )?;
            put(&mut out, &format!("{o}attn.qkv.weight"), w);
            put(&mut out, &format!("{o}attn.qkv.bias"), b);
            for (ours, theirs) in [
                ("attn.proj", "attention.output.dense"),
                ("norm1", "layernorm_before"),
                ("norm2", "layernorm_after"),
                ("mlp.fc1", "intermediate.dense"),
                ("mlp.fc2", "output.dense"),
            ] {
                for wb in ["weight", "bias"] {
                    put(&mut out, &format!("{o}{ours}.{wb}"), get(&format!("{l}{theirs}.{wb}"))?);
                }
            }
        } else {
            for name in ["attn.qkv", "attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"] {
                for wb in ["weight", "bias"] {
                    put(&mut out, &format!("{o}{name}.{wb}"), get(&format!("{o}{name}.{wb}"))?);
                }
            }
        }
    }
    let final_norm = if hf { "layernorm" } else { "norm" };
    for wb in ["weight", "bias"] {
        put(&mut out, &format!("norm.{wb}"), get(&format!("{final_norm}.{wb}"))?);
    }
    Ok(out)
}

/// Bilinear resampling of a `[1, 1 + g², D]` position embedding to another grid (the class
/// token's embedding is kept).
fn resample_pos_embed(pos: &Tensor, grid: usize) -> Result<Tensor> {
    let (_, n, d) = pos.dims3()?;
    let g_src = ((n - 1) as f64).sqrt().round() as usize;
    if g_src * g_src != n - 1 {
        return Err(ModelError::Weights {
            what: "pretrained ViT".into(),
            message: format!("position embedding of {n} tokens is not 1 + a square grid"),
        });
    }
    if g_src == grid {
        return Ok(pos.clone());
    }
    let cls = pos.narrow(1, 0, 1)?;
    let v: Vec<f32> = pos.narrow(1, 1, n - 1)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let mut out = vec![0f32; grid * grid * d];
    let scale = g_src as f64 / grid as f64;
    for y in 0..grid {
        // Align centres, as `F.interpolate(mode="bilinear", align_corners=False)`.
        let sy = ((y as f64 + 0.5) * scale - 0.5).clamp(0.0, (g_src - 1) as f64);
        let (y0, fy) = (sy.floor() as usize, sy - sy.floor());
        let y1 = (y0 + 1).min(g_src - 1);
        for x in 0..grid {
            let sx = ((x as f64 + 0.5) * scale - 0.5).clamp(0.0, (g_src - 1) as f64);
            let (x0, fx) = (sx.floor() as usize, sx - sx.floor());
            let x1 = (x0 + 1).min(g_src - 1);
            for k in 0..d {
                let at = |yy: usize, xx: usize| v[(yy * g_src + xx) * d + k] as f64;
                let val = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1))
                    + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1));
                out[(y * grid + x) * d + k] = val as f32;
            }
        }
    }
    let grid_t = Tensor::from_vec(out, (1, grid * grid, d), pos.device())?.to_dtype(pos.dtype())?;
    Ok(Tensor::cat(&[&cls, &grid_t], 1)?)
}
