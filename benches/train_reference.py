"""PyTorch reference for `molclip bench train`: the first steps of a training epoch, end to
end, the usual PyTorch way. A DataLoader with one worker process per thread reads and
augments the same frame files with PIL (resize, rotation, rescaling, flips, blur, random
crop, jitter, normalisation, as the config says), batches of P x K videos drawn at random per step;
the same network (python/torch_reference.py), the config's losses (cross-entropy with label
smoothing, batch-hard triplet, centre loss with its own SGD) and optimiser.

    python3 benches/train_reference.py JOB.json
JOB.json (written by molclip): {"config": the run config as JSON, "cells": [[folder, label],
...], "identity": "drug" or "moa", "drugs", "moas" (classes), "steps", "threads", "device",
"seed"}.
The config's `precision` sets PyTorch's as `bench model --precision` does (f32: PyTorch's
defaults; tf32: TF32 matrix products too; bf16: autocast, the losses in float32).
Prints one JSON line: {"step_seconds", "data_share", "peak_rss_mib", "params", "torch", "isa"}.
"""

import inspect
import json
import os
import random
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import torch_reference as R  # noqa: E402
from augment_reference import Augment  # noqa: E402


class Videos(torch.utils.data.Dataset):
    """One augmented video [T, C, crop, crop] and its label per item."""

    def __init__(self, cells, data, seed):
        self.cells, self.seed = cells, seed
        self.augment = Augment(data)

    def __len__(self):
        return len(self.cells)

    def __getitem__(self, i):
        folder, label = self.cells[i]
        rng = random.Random(self.seed * 1_000_003 + i)
        return torch.from_numpy(self.augment.video(folder, rng)), label


def pk_batches(labels, p, k, steps, rng):
    """`steps` batches of p labels drawn at random, k of each label's videos."""
    by = {}
    for i, l in enumerate(labels):
        by.setdefault(l, []).append(i)
    keys = sorted(by)
    out = []
    for _ in range(steps):
        batch = []
        for l in rng.sample(keys, min(p, len(keys))):
            members = by[l]
            batch += rng.sample(members, k) if len(members) >= k else rng.choices(members, k=k)
        out.append(batch)
    return out


def encoder(video, crop, channels, frames):
    name = video["encoder"]
    if name.startswith("i3d-resnet"):
        i3d = video["i3d"]
        return R.I3dResNet(depth=int(name[len("i3d-resnet"):]), in_channels=channels, width=i3d["width"],
                           temporal=i3d["temporal"], blocks=i3d["blocks"])
    if name == "frame-vit":
        known = inspect.signature(R.FrameVit).parameters
        vit = {k: v for k, v in video["vit"].items() if k in known}
        vit.update(image_size=crop, in_channels=channels, max_frames=max(vit.get("max_frames", 32), frames))
        return R.FrameVit(**vit)
    raise SystemExit(f"encoder {name}: the reference builds i3d-resnet18/34/50 and frame-vit")


def main():
    job = json.load(open(sys.argv[1]))
    cfg, data, device = job["config"], job["config"]["data"], job["device"]
    threads = job["threads"]
    torch.set_num_threads(threads)
    # The config's precision, as bench model's reference takes it; measured cuDNN algorithms
    # where molclip's run measures them (config or environment).
    autocast = R.precision(cfg.get("precision", "f32"), device, cfg.get("cudnn_benchmark", False))
    isa = R.cpu_isa() if device == "cpu" else device
    torch.manual_seed(job["seed"])
    cells = [tuple(c) for c in job["cells"]]
    labels = [c[1] for c in cells]
    # Both heads, as molclip's trainer builds them; the stage trains one.
    head = "drug_logits" if job["identity"] == "drug" else "moa_logits"
    classes = job["drugs"] if head == "drug_logits" else job["moas"]
    s = data["sampler"]
    batches = pk_batches(labels, s["p"], s["k"], job["steps"], random.Random(job["seed"]))
    dataset = Videos(cells, data, job["seed"])
    augment = dataset.augment
    channels = 3 if augment.rgb else 1
    video = cfg["model"]["video"]
    net = encoder(video, augment.crop, channels, augment.frames)
    model = R.VideoModel(net, pooling=video["pooling"], drugs=job["drugs"], moas=job["moas"]).to(device)
    loss_cfg, opt_cfg = cfg["loss"], cfg["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_cfg["kind"] == "sgd":
        opt = torch.optim.SGD(params, lr=opt_cfg["lr"], momentum=opt_cfg["momentum"],
                              nesterov=opt_cfg["nesterov"], weight_decay=opt_cfg["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
    centres, centre_opt = None, None
    if loss_cfg["center"] > 0:
        centres = torch.nn.Parameter(torch.randn(classes, net.out_dim, device=device))
        if loss_cfg.get("center_lr", 0) > 0:
            centre_opt = torch.optim.SGD([centres], lr=loss_cfg["center_lr"] / loss_cfg["center"])
        else:
            opt.add_param_group({"params": [centres]})
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=threads,
                                         pin_memory=device.startswith("cuda"), prefetch_factor=2)
    model.train()
    total = wait = 0.0
    it = iter(loader)
    for _ in range(len(batches)):
        start = time.perf_counter()
        x, y = next(it)
        wait += time.perf_counter() - start
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            out = model(x)
        # The losses in float32, as molclip's autocast keeps them.
        logits, feature = out[head].float(), out["feature"].float()
        loss = loss_cfg["ce"] * F.cross_entropy(logits, y, label_smoothing=loss_cfg["label_smoothing"])
        if loss_cfg["triplet"] > 0:
            loss = loss + loss_cfg["triplet"] * R.batch_hard_triplet(feature, y, loss_cfg["margin"])
        if centres is not None:
            loss = loss + loss_cfg["center"] * R.center_loss(feature, y, centres)
        opt.zero_grad(set_to_none=True)
        if centre_opt is not None:
            centre_opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["clip_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["clip_grad_norm"])
        opt.step()
        if centre_opt is not None:
            centre_opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        total += time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step_seconds": total / len(batches), "data_share": wait / total, "peak_rss_mib": peak,
                      "params": sum(p.numel() for p in params), "loss": loss.item(), "torch": torch.__version__,
                      "isa": isa}))


if __name__ == "__main__":
    main()
