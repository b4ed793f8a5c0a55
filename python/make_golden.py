"""Writes the golden files the Rust tests compare against (crates/molclip/tests/golden/).

    python3 -m pip install torch safetensors rdkit
    python3 python/make_golden.py            # rewrites crates/molclip/tests/golden/*.safetensors

Each file holds, for one module or loss:
  in.<name>          inputs (float32, or int64 for indices and labels)
  param.<name>       the weights and buffers before the forward pass (PyTorch state-dict names)
  probe.<name>       a fixed random tensor per output; the backward pass starts from
                     sum(output * probe) summed over outputs
  out.<name>         outputs
  grad.in.<name>     gradients of the inputs
  grad.param.<name>  gradients of the trainable weights
  state.<name>       buffers after the forward pass (batch-norm running statistics)
  f32err.<key>       how far PyTorch itself, in float32, lands from the reference for <key>
The forward and backward passes run in float64 from the float32 inputs and weights, so the
reference is exact to float32 rounding. The Rust side runs in float32 and must agree within
1e-4 relative to each tensor's largest magnitude, or within twice PyTorch's own float32 error
where that is larger (deep batch-normed networks on small inputs, whose float32 results
PyTorch itself only gets to about 1e-4).
"""

import copy
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import torch_reference as R  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "molclip", "tests", "golden")


def run_case(name, module, inputs, forward, train=True):
    """inputs: dict name -> tensor (float ones get gradients). forward(module, inputs) -> dict of outputs."""
    params = {k: v.detach().clone() for k, v in module.state_dict().items()} if module is not None else {}
    module32 = copy.deepcopy(module) if module is not None else None
    ins, outs, probes = differentiate(module, inputs, forward, train, torch.float64)
    ins32, outs32, _ = differentiate(module32, inputs, forward, train, torch.float32)
    grads = lambda ins, m: {**{f"grad.in.{k}": v.grad for k, v in ins.items() if v.is_floating_point() and v.grad is not None},  # noqa: E731
                            **({f"grad.param.{k}": p.grad for k, p in m.named_parameters() if p.grad is not None} if m is not None else {})}
    ref = {**{f"out.{k}": v.detach() for k, v in outs.items()}, **grads(ins, module)}
    f32 = {**{f"out.{k}": v.detach() for k, v in outs32.items()}, **grads(ins32, module32)}
    file = {}
    for k, v in ref.items():
        scale = v.abs().max().clamp(min=1e-30)
        file[f"f32err.{k}"] = ((f32[k].double() - v).abs().max() / scale).float().reshape(())
    for k, v in inputs.items():
        file[f"in.{k}"] = v.contiguous()
    for k, v in params.items():
        file[f"param.{k}"] = v.contiguous()
    for k, v in probes.items():
        file[f"probe.{k}"] = v.float().contiguous()
    for k, v in ref.items():
        file[k] = v.float().contiguous()
    if module is not None:
        for k, b in module.named_buffers():
            file[f"state.{k}"] = b.detach().to(params[k].dtype).contiguous()
    worst = max(file[k].item() for k in file if k.startswith("f32err.") and ref[k[7:]].abs().max() > 1e-9)
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(file, path)
    size = os.path.getsize(path)
    print(f"{name:28s} {len(file):4d} tensors {size / 1024:8.1f} KiB   PyTorch float32 error up to {worst:.1e}")


def differentiate(module, inputs, forward, train, dtype):
    if module is not None:
        module.to(dtype)
        module.train(train)
    ins = {k: v.detach().to(dtype).requires_grad_(True) if v.is_floating_point() else v for k, v in inputs.items()}
    outs = forward(module, ins)
    gen = torch.Generator().manual_seed(99)
    loss = 0
    probes = {}
    for k, v in outs.items():
        p = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        probes[k] = p
        loss = loss + (v * p.to(dtype)).sum()
    loss.backward()
    return ins, outs, probes


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # conv3d and max_pool3d, every window the encoders use
    windows = [((3, 3, 3), (1, 1, 1), (1, 1, 1)), ((3, 3, 3), (2, 2, 2), (1, 1, 1)), ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
               ((5, 7, 7), (1, 2, 2), (2, 3, 3)), ((3, 1, 1), (1, 1, 1), (1, 0, 0)), ((1, 1, 1), (2, 2, 2), (0, 0, 0))]
    inputs = {"x": randn(2, 3, 6, 11, 10)}
    for i, (k, _, _) in enumerate(windows):
        inputs[f"w{i}"] = randn(4, 3, *k) * 0.3

    def conv_forward(_, ins):
        outs = {}
        for i, (k, s, p) in enumerate(windows):
            outs[f"y{i}"] = torch.nn.functional.conv3d(ins["x"], ins[f"w{i}"], stride=s, padding=p)
        outs["pool"] = torch.nn.functional.max_pool3d(ins["x"], 3, 2, 1)
        return outs
    run_case("conv3d", None, inputs, conv_forward)

    # I3D-ResNet18, modified temporal downsampling, and I3D-ResNet50, standard
    torch.manual_seed(1)
    m = R.I3dResNet(depth=18, in_channels=1, width=4, temporal="modified")
    run_case("i3d_resnet18_modified", m, {"x": randn(2, 1, 8, 32, 32)}, lambda m, i: {"y": m(i["x"])})
    torch.manual_seed(2)
    m = R.I3dResNet(depth=50, in_channels=1, width=4, temporal="standard")
    run_case("i3d_resnet50_standard", m, {"x": randn(4, 1, 8, 48, 48)}, lambda m, i: {"y": m(i["x"])})

    # Frame ViT
    torch.manual_seed(3)
    vit_cfg = dict(image_size=32, patch_size=8, in_channels=1, dim=16, depth=2, heads=2, mlp_ratio=4.0, temporal_depth=1, max_frames=8)
    m = R.FrameVit(**vit_cfg)
    run_case("frame_vit", m, {"x": randn(2, 4, 1, 32, 32)}, lambda m, i: {"y": m(i["x"])})

    # Video model: frame ViT + attention pooling + BNNeck + classifiers, training mode
    torch.manual_seed(4)
    m = R.VideoModel(R.FrameVit(**vit_cfg), pooling="attention", drugs=5, moas=3)
    run_case("video_attention", m, {"x": randn(4, 4, 1, 32, 32)}, lambda m, i: m(i["x"]))
    # ... I3D + mean pooling, evaluation mode (running statistics)
    torch.manual_seed(5)
    m = R.VideoModel(R.I3dResNet(depth=18, in_channels=1, width=4), pooling="mean", drugs=5, moas=0)
    for name, buf in m.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape) + 0.5)
    run_case("video_mean_eval", m, {"x": randn(3, 8, 1, 32, 32)}, lambda m, i: m(i["x"]), train=False)

    # GIN over real molecules (features as molclip-chem encodes them, from RDKit)
    torch.manual_seed(6)
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "C[C@H](N)C(=O)O", "O=C(O)c1ccc(Cl)cc1"]
    atoms, src, dst, bonds, gid = molecule_graphs(smiles)
    m = R.Gin(hidden=16, layers=3)
    n_graphs = len(smiles)
    run_case("gin", m, {"atoms": atoms, "src": src, "dst": dst, "bonds": bonds, "graph_of_atom": gid},
             lambda m, i: {"y": m(i["atoms"], i["src"], i["dst"], i["bonds"], i["graph_of_atom"], n_graphs)})

    # Morgan MLP and a projection head
    torch.manual_seed(7)
    m = R.MorganMlp(bits=64, hidden=16, layers=3)
    fp = (torch.rand(5, 64, generator=g) < 0.2).float()
    run_case("morgan_mlp", m, {"fp": fp}, lambda m, i: {"y": m(i["fp"])})
    torch.manual_seed(8)
    m = R.Projection(12, 8)
    run_case("projection", m, {"x": randn(5, 12)}, lambda m, i: {"y": m(i["x"])})

    # Losses
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0], dtype=torch.int64)
    feats = randn(8, 6)
    run_case("triplet", None, {"features": feats, "labels": labels},
             lambda _, i: {"loss": R.batch_hard_triplet(i["features"], i["labels"], 0.3)})
    logits = randn(8, 5) * 2
    run_case("cross_entropy", None, {"logits": logits, "labels": labels},
             lambda _, i: {"loss": R.cross_entropy(i["logits"], i["labels"], 0.1)})
    centers = randn(3, 6)
    run_case("center", None, {"features": feats, "labels": labels, "centers": centers},
             lambda _, i: {"loss": R.center_loss(i["features"], i["labels"], i["centers"])})
    v = torch.nn.functional.normalize(randn(8, 6), dim=1)
    mol = torch.nn.functional.normalize(randn(3, 6), dim=1)
    mol_drugs = torch.tensor([0, 1, 2], dtype=torch.int64)
    for name, scale in [("clip", torch.tensor(2.659260036932778)), ("clip_clamped", torch.tensor(5.0))]:
        run_case(name, None, {"videos": v, "molecules": mol, "video_drugs": labels, "molecule_drugs": mol_drugs, "logit_scale": scale},
                 lambda _, i: {"loss": R.clip_loss(i["videos"], i["molecules"], i["video_drugs"], i["molecule_drugs"], i["logit_scale"], 100.0)})
    # The weighted sum, as the trainer builds it: 1·clip + 1·triplet + 1·CE + 0.01·centre
    def combined(_, i):
        return {"loss": R.clip_loss(i["videos"], i["molecules"], i["video_drugs"], i["molecule_drugs"], i["logit_scale"])
                + R.batch_hard_triplet(i["features"], i["video_drugs"], 0.3)
                + R.cross_entropy(i["logits"], i["video_drugs"], 0.1)
                + 0.01 * R.center_loss(i["features"], i["video_drugs"], i["centers"])}
    run_case("combined", None, {"videos": v, "molecules": mol, "video_drugs": labels, "molecule_drugs": mol_drugs,
                                "logit_scale": torch.tensor(2.659260036932778), "features": feats, "logits": logits[:, :3], "centers": centers},
             combined)


def molecule_graphs(smiles):
    """OGB-style integer features with molclip-chem's encoding (graph.rs: encode)."""
    from rdkit import Chem

    def capped(v, lo, hi):
        return v - lo if lo <= v <= hi else hi - lo + 1

    hyb = {Chem.HybridizationType.SP: 0, Chem.HybridizationType.SP2: 1, Chem.HybridizationType.SP3: 2,
           Chem.HybridizationType.SP3D: 3, Chem.HybridizationType.SP3D2: 4}
    chi = {Chem.ChiralType.CHI_UNSPECIFIED: 0, Chem.ChiralType.CHI_TETRAHEDRAL_CW: 1, Chem.ChiralType.CHI_TETRAHEDRAL_CCW: 2}
    btype = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2, Chem.BondType.AROMATIC: 3}
    stereo = {Chem.BondStereo.STEREONONE: 0, Chem.BondStereo.STEREOZ: 1, Chem.BondStereo.STEREOE: 2, Chem.BondStereo.STEREOANY: 3}
    atoms, src, dst, bonds, gid = [], [], [], [], []
    offset = 0
    for g, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        for a in mol.GetAtoms():
            atoms.append([capped(a.GetAtomicNum(), 1, 118), capped(a.GetDegree(), 0, 10), capped(a.GetFormalCharge(), -5, 5),
                          capped(a.GetTotalNumHs(), 0, 8), int(a.GetIsAromatic()), hyb.get(a.GetHybridization(), 5),
                          int(a.IsInRing()), chi.get(a.GetChiralTag(), 3)])
            gid.append(g)
        for b in mol.GetBonds():
            f = [btype.get(b.GetBondType(), 4), int(b.GetIsConjugated()), int(b.IsInRing()), stereo[b.GetStereo()]]
            for u, w in [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), (b.GetEndAtomIdx(), b.GetBeginAtomIdx())]:
                src.append(offset + u)
                dst.append(offset + w)
                bonds.append(f)
        offset += mol.GetNumAtoms()
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return t(atoms), t(src), t(dst), t(bonds), t(gid)


if __name__ == "__main__":
    main()
