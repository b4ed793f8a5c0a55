"""Writes a pretrained-3D-ResNet checkpoint in the exact format MitoReID starts from, from
random weights, and the features PyTorch computes with it (for `molclip weights import-i3d`).

    python3 -m pip install torch safetensors
    python3 python/make_r3d_checkpoint.py      # rewrites crates/molclip/tests/golden/r3d50.*

The format is that of kenshohara's 3D-ResNets-PyTorch Kinetics checkpoints, which MitoReID's
`models/resnet.py` loads: `torch.save({"epoch", "arch", "state_dict", "optimizer"})`, the
state dict saved from `nn.DataParallel` (every name under `module.`), kenshohara's names
(`conv1`, `bn1`, `layer1.0.conv1` ... `layer4.2.bn3`, `downsample.0/1`, `fc`), a 3-channel
7x7x7 stem. The network is ResNet-50 (bottlenecks 3, 4, 6, 3) at a sixteenth of the width
(kenshohara's `widen_factor`), so that the file stays small; MitoReID's temporal strides
(`downscale_temporal_dimension = 0`: time halved by the stem's pooling and `layer2` only).

golden/r3d50_features.safetensors holds:
  in.rgb     [1, 3, 16, 32, 32] input
  out.rgb    [1, T', D] features: layer4 averaged over space, in eval mode
  in.grey    [1, 1, 16, 32, 32] a grey input; PyTorch sees it as R = G = B
  out.grey   its features
"""

import os
import zipfile

import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "molclip", "tests", "golden")
WIDTH = 4  # 64 / 16


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + shortcut)


class R3d50(nn.Module):
    def __init__(self, width, channels=3, classes=400):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, width, 7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        c_in = width
        strides = [1, 2, (1, 2, 2), (1, 2, 2)]
        for i, (n, stride) in enumerate(zip([3, 4, 6, 3], strides)):
            planes = width << i
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if b == 0 and (s != 1 or c_in != planes * 4):
                    down = nn.Sequential(nn.Conv3d(c_in, planes * 4, 1, stride=s, bias=False), nn.BatchNorm3d(planes * 4))
                blocks.append(Bottleneck(c_in, planes, s, down))
                c_in = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, classes)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(3, 4)).transpose(1, 2).contiguous()


def without_zip64(path):
    """The same archive without the zip64 records that torch >= 2 writes: as torch 1.6 to 1.13
    wrote checkpoints, which candle's reader (and so molclip) takes. torch.load reads both."""
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=False) as dst:
        for name, data in entries:
            dst.writestr(name, data)
    assert "module.conv1.weight" in torch.load(path, weights_only=False)["state_dict"]


def main():
    torch.manual_seed(7)
    model = R3d50(WIDTH)
    # Trained-looking batch norms, so that a wrong mapping of any buffer shows.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)
    model.eval()
    parallel = nn.DataParallel(model)
    checkpoint = {
        "epoch": 200,
        "arch": "resnet-50",
        "state_dict": parallel.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
    }
    path = os.path.join(OUT, "r3d50_kinetics_format.pth")
    torch.save(checkpoint, path)
    without_zip64(path)
    rgb = torch.rand(1, 3, 16, 32, 32)
    grey = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        out_rgb = model.features(rgb)
        out_grey = model.features(grey.repeat(1, 3, 1, 1, 1))
    save_file(
        {"in.rgb": rgb, "out.rgb": out_rgb, "in.grey": grey, "out.grey": out_grey},
        os.path.join(OUT, "r3d50_features.safetensors"),
    )
    print("features", tuple(out_rgb.shape), "from", sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()
