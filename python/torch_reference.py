"""PyTorch reference of molclip's encoders and losses.

The same architectures as crates/molclip/src/models and crates/molclip/src/losses, written
the usual PyTorch way, with the same state-dict names. It is the oracle for the golden tests
(make_golden.py) and the baseline of `molclip bench model` (benches/model_reference.py).
The product never needs it.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------- video encoders


class BasicBlock(nn.Module):
    def __init__(self, c_in, planes, st, ss, blocks="inflated"):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, planes, (3, 3, 3), (st, ss, ss), (1, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        # Inflated: 1x3x3 after the temporal first convolution; r3d (kenshohara): 3x3x3.
        k2, p2 = ((3, 3, 3), (1, 1, 1)) if blocks == "r3d" else ((1, 3, 3), (0, 1, 1))
        self.conv2 = nn.Conv3d(planes, planes, k2, 1, p2, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = None
        if c_in != planes or st != 1 or ss != 1:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, planes, 1, (st, ss, ss), bias=False), nn.BatchNorm3d(planes)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, c_in, planes, st, ss, blocks="inflated"):
        super().__init__()
        out = planes * 4
        # Inflated: 3x1x1 then 1x3x3; r3d (kenshohara): 1x1x1 then 3x3x3.
        r3d = blocks == "r3d"
        k1, p1 = ((1, 1, 1), (0, 0, 0)) if r3d else ((3, 1, 1), (1, 0, 0))
        k2, p2 = ((3, 3, 3), (1, 1, 1)) if r3d else ((1, 3, 3), (0, 1, 1))
        self.conv1 = nn.Conv3d(c_in, planes, k1, 1, p1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, k2, (st, ss, ss), p2, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.downsample = None
        if c_in != out or st != 1 or ss != 1:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, out, 1, (st, ss, ss), bias=False), nn.BatchNorm3d(out)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class I3dResNet(nn.Module):
    """[B, C, T, H, W] -> [B, T', D]."""

    def __init__(self, depth=18, in_channels=1, width=64, temporal="modified", blocks="inflated"):
        super().__init__()
        style = blocks
        blocks, block = {18: ([2, 2, 2, 2], BasicBlock), 34: ([3, 4, 6, 3], BasicBlock), 50: ([3, 4, 6, 3], Bottleneck)}[depth]
        expansion = 4 if block is Bottleneck else 1
        time_strides = [1, 2, 1, 1] if temporal == "modified" else [1, 2, 2, 2]
        if style == "r3d":
            self.conv1 = nn.Conv3d(in_channels, width, (7, 7, 7), (1, 2, 2), (3, 3, 3), bias=False)
        else:
            self.conv1 = nn.Conv3d(in_channels, width, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.pool = nn.MaxPool3d(3, 2, 1)
        c_in = width
        for stage, (n, st) in enumerate(zip(blocks, time_strides)):
            planes = width << stage
            ss = 1 if stage == 0 else 2
            layer = []
            for i in range(n):
                layer.append(block(c_in, planes, st if i == 0 else 1, ss if i == 0 else 1, style))
                c_in = planes * expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.out_dim = c_in

    def forward(self, x):
        y = self.pool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            y = getattr(self, f"layer{i}")(y)
        return y.mean((3, 4)).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, round(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FrameVit(nn.Module):
    """[B, T, C, H, W] -> [B, T, D]."""

    def __init__(self, image_size=112, patch_size=16, in_channels=1, dim=192, depth=4, heads=3,
                 mlp_ratio=4.0, temporal_depth=1, max_frames=32, eps=1e-6):
        super().__init__()
        grid = image_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02, a=-0.04, b=0.04))
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, grid * grid + 1, dim), std=0.02, a=-0.04, b=0.04))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.time_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, max_frames, dim), std=0.02, a=-0.04, b=0.04))
        self.temporal_blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, eps) for _ in range(temporal_depth)])
        self.temporal_norm = nn.LayerNorm(dim, eps=eps)
        self.out_dim = dim

    def forward(self, x):
        b, t, c, h, w = x.shape
        tokens = self.patch_embed.proj(x.reshape(b * t, c, h, w)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b * t, -1, -1), tokens], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        y = self.norm(x)[:, 0].reshape(b, t, -1) + self.time_embed[:, :t]
        for blk in self.temporal_blocks:
            y = blk(y)
        return self.temporal_norm(y)


class AttentionPool(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(nn.init.trunc_normal_(torch.empty(dim), std=0.02, a=-0.04, b=0.04))

    def forward(self, x):
        w = ((self.key(x) @ self.query) * x.shape[-1] ** -0.5).softmax(1)
        return (w.unsqueeze(-1) * x).sum(1), w


class VideoModel(nn.Module):
    def __init__(self, encoder, pooling="attention", drugs=0, moas=0):
        super().__init__()
        self.encoder = encoder
        dim = encoder.out_dim
        self.pool = AttentionPool(dim) if pooling == "attention" else None
        self.neck = nn.BatchNorm1d(dim)
        self.neck.bias.requires_grad_(False)
        self.drug_classifier = nn.Linear(dim, drugs, bias=False) if drugs else None
        self.moa_classifier = nn.Linear(dim, moas, bias=False) if moas else None

    def forward(self, x):
        if isinstance(self.encoder, I3dResNet):
            f = self.encoder(x.permute(0, 2, 1, 3, 4))
        else:
            f = self.encoder(x)
        if self.pool is not None:
            feat, att = self.pool(f)
        else:
            feat, att = f.mean(1), torch.full(f.shape[:2], 1.0 / f.shape[1])
        neck = self.neck(feat)
        out = {"time_features": f, "attention": att, "feature": feat, "neck_feature": neck}
        if self.drug_classifier is not None:
            out["drug_logits"] = self.drug_classifier(neck)
        if self.moa_classifier is not None:
            out["moa_logits"] = self.moa_classifier(neck)
        return out


# ------------------------------------------------------------------------ molecule encoders

ATOM_FEATURE_DIMS = [119, 12, 12, 10, 2, 6, 2, 4]
BOND_FEATURE_DIMS = [5, 2, 2, 4]


class FeatureEncoder(nn.Module):
    def __init__(self, sizes, dim, name):
        super().__init__()
        tables = nn.ModuleList()
        for n in sizes:
            emb = nn.Embedding(n, dim)
            nn.init.xavier_uniform_(emb.weight)
            tables.append(emb)
        setattr(self, name, tables)
        self.name = name

    def forward(self, cols):
        tables = getattr(self, self.name)
        return sum(tables[i](cols[:, i]) for i in range(cols.shape[1]))


class GinLayer(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.bond_encoder = FeatureEncoder(BOND_FEATURE_DIMS, hidden, "bond_embedding_list")
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, h, src, dst, bonds):
        agg = torch.zeros_like(h)
        if src.numel():
            msg = F.relu(h[src] + self.bond_encoder(bonds))
            agg = agg.index_add(0, dst, msg)
        return self.mlp((1 + self.eps) * h + agg)


class Gin(nn.Module):
    def __init__(self, hidden=256, layers=3):
        super().__init__()
        self.atom_encoder = FeatureEncoder(ATOM_FEATURE_DIMS, hidden, "atom_embedding_list")
        self.convs = nn.ModuleList([GinLayer(hidden) for _ in range(layers)])
        self.batch_norms = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(layers)])
        self.out_dim = hidden

    def forward(self, atoms, src, dst, bonds, graph_of_atom, graphs):
        h = self.atom_encoder(atoms)
        for i, (conv, bn) in enumerate(zip(self.convs, self.batch_norms)):
            h = bn(conv(h, src, dst, bonds))
            if i < len(self.convs) - 1:
                h = F.relu(h)
        sums = torch.zeros(graphs, h.shape[1], dtype=h.dtype).index_add(0, graph_of_atom, h)
        counts = torch.bincount(graph_of_atom, minlength=graphs).to(h.dtype).unsqueeze(1)
        return sums / counts


class MorganMlp(nn.Module):
    def __init__(self, bits=2048, hidden=512, layers=2):
        super().__init__()
        mods = []
        for i in range(layers):
            mods.append(nn.Linear(bits if i == 0 else hidden, hidden))
            if i + 1 < layers:
                mods.append(nn.ReLU())
        self.mlp = nn.Sequential(*mods)
        self.out_dim = hidden

    def forward(self, fp):
        return self.mlp(fp)


class Projection(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x):
        return F.normalize(self.linear(x), dim=-1)


# ------------------------------------------------------------------------------------ losses


def clip_loss(videos, molecules, video_drugs, molecule_drugs, logit_scale, max_logit_scale=100.0):
    scale = logit_scale.clamp(max=math.log(max_logit_scale)).exp()
    logits = scale * videos @ molecules.t()
    pos = (video_drugs[:, None] == molecule_drugs[None, :]).to(logits.dtype)
    v2m = pos / pos.sum(1, keepdim=True)
    m2v = pos.t() / pos.t().sum(1, keepdim=True)
    loss_v = -(F.log_softmax(logits, 1) * v2m).sum(1).mean()
    loss_m = -(F.log_softmax(logits.t(), 1) * m2v).sum(1).mean()
    return (loss_v + loss_m) / 2


def batch_hard_triplet(features, labels, margin=0.3):
    sq = (features ** 2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2 * features @ features.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    ap = torch.where(same, dist, torch.full_like(dist, -math.inf)).max(1).values
    an = torch.where(same, torch.full_like(dist, math.inf), dist).min(1).values
    return F.margin_ranking_loss(an, ap, torch.ones_like(an), margin=margin)


def cross_entropy(logits, targets, label_smoothing=0.1):
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def center_loss(features, labels, centers):
    return ((features - centers[labels]) ** 2).sum(1).mean()


# --------------------------------------------------------------------------- benchmarks


def precision(name, device, benchmark=False):
    """Sets PyTorch up as molclip's `precision` runs, for both benchmark references, and
    returns the autocast context for the forward pass: "f32", PyTorch's defaults (cuDNN may
    use TF32, matrix products do not); "tf32", TF32 matrix products too; "bf16", autocast to
    bf16 (the caller computes the losses in float32, as molclip's autocast does). cuDNN's
    algorithms are measured (`cudnn.benchmark`) where `benchmark` says or molclip's own switch,
    MOLCLIP_CUDNN_BENCHMARK=1, is set, so that both sides pick alike."""
    import os

    if name == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = benchmark or os.environ.get("MOLCLIP_CUDNN_BENCHMARK") == "1"
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=name == "bf16")


def cpu_isa():
    """The instruction sets PyTorch's CPU kernels run with: ATen's (ATEN_CPU_CAPABILITY caps it)
    and oneDNN's, which runs the convolutions and ignores ATen's cap (ONEDNN_MAX_CPU_ISA caps
    it), e.g. "AVX2, oneDNN AVX2". oneDNN names its ISA in its verbose header, which it prints
    to the process's standard output when it first builds a primitive; that is read here from
    one small convolution with the output redirected."""
    import os
    import tempfile

    aten = torch.backends.cpu.get_cpu_capability()
    if not torch.backends.mkldnn.is_available():
        return aten
    with tempfile.TemporaryFile(mode="w+") as captured:
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                # Large enough for PyTorch to hand it to oneDNN rather than its own loop.
                F.conv3d(torch.randn(2, 8, 8, 32, 32), torch.randn(16, 8, 3, 3, 3))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        for line in captured:
            if ",isa:" in line:
                # "Intel AVX-512 with Intel DL Boost and bfloat16 support" -> "AVX-512"
                isa = line.split(",isa:", 1)[1].strip().removeprefix("Intel ").split(" with ")[0]
                return f"{aten}, oneDNN {isa}"
    return f"{aten}, oneDNN ?"
