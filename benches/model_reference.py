"""PyTorch eager reference for `molclip bench model`: one training step (forward, backward,
AdamW) of the same video model, same sizes, same loss, same thread count.

    python3 benches/model_reference.py --model frame-vit --threads 2 --steps 5
Prints one JSON line: {"median_ms", "peak_rss_mib", "torch"}.
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import torch_reference as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=["frame-vit", "i3d-resnet18", "i3d-resnet50"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--size", type=int, default=112)
    # The I3Ds' blocks: inflated, or r3d (kenshohara's 3D ResNet, MitoReID's network).
    ap.add_argument("--blocks", default="inflated", choices=["inflated", "r3d"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    # f32: PyTorch's defaults (cuDNN may use TF32, matrix products do not); tf32: TF32
    # products too; bf16: autocast.
    ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
    a = ap.parse_args()
    # molclip's switch for measured cuDNN algorithms sets PyTorch's own, so both sides pick alike.
    autocast = R.precision(a.precision, a.device)
    torch.set_num_threads(a.threads)
    isa = R.cpu_isa() if a.device == "cpu" else a.device
    torch.manual_seed(0)
    if a.model == "frame-vit":
        enc = R.FrameVit(image_size=a.size, in_channels=a.channels, max_frames=max(32, a.frames))
    else:
        enc = R.I3dResNet(depth=50 if a.model.endswith("50") else 18, in_channels=a.channels, blocks=a.blocks)
    model = R.VideoModel(enc, pooling="attention", drugs=4).to(a.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0.05)
    x = torch.randn(a.batch, a.frames, a.channels, a.size, a.size, device=a.device)
    labels = torch.arange(a.batch, device=a.device) // 2 % 4
    model.train()
    times = []
    for step in range(a.warmup + a.steps):
        start = time.perf_counter()
        with autocast:
            out = model(x)
        # The losses in float32, as molclip's autocast keeps them.
        logits, feature = out["drug_logits"].float(), out["feature"].float()
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1) + R.batch_hard_triplet(feature, labels, 0.3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if a.device != "cpu":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"median_ms": times[len(times) // 2], "peak_rss_mib": peak, "torch": torch.__version__, "loss": loss.item(),
                      # The kernels ATen and oneDNN picked, or the GPU.
                      "isa": isa}))


if __name__ == "__main__":
    main()
