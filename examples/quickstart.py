"""molclip from Python in one page: simulate a tiny MitoDataset, train MolCLIP on it,
embed the query and gallery videos, evaluate them (MitoReID protocol) and draw a t-SNE
map of the embeddings coloured by MoA.

    pip install ./crates/molclip-py matplotlib
    python examples/quickstart.py --out quickstart      # about a minute on 2 cores

Writes OUT/tiny (the dataset), OUT/run (the run folder) and OUT/tsne.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the figure goes to a file
import matplotlib.pyplot as plt

import molclip

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", type=Path, default=Path("quickstart"))
parser.add_argument("--quiet", action="store_true", help="no progress bars")
args = parser.parse_args()
progress = not args.quiet
config = Path(__file__).resolve().parents[1] / "configs" / "molclip.toml"

# 1. A tiny simulated dataset: 6 MoAs, 16 drugs, 147 cells of 16 frames.
data = args.out / "tiny"
if not (data / "annotation.csv").exists():
    molclip.simulate("tiny", out=data, seed=7, progress=progress)
dataset = molclip.Dataset(data, progress=progress)
print(dataset, "\n", dataset.index.groupby("split").size().to_string())

# 2. MolCLIP, shortened to seconds: small frames, a narrow I3D, one epoch per stage.
quick = {"data.frames.frames": 8, "data.augment.resize": 36, "data.augment.crop": 32,
         "model.video.i3d.width": 8, "data.sampler.p": 4}
run_dir = args.out / "run"
if (run_dir / "model.safetensors").exists():
    run = molclip.Run(run_dir)
else:  # a fresh run, or one interrupted (Ctrl-C) resumed where it stopped
    resume = (run_dir / "checkpoints" / "last").exists()
    run = molclip.train(config, data, run_dir, resume=resume, epochs=1, set=quick, progress=progress)
print(run.metrics[["step", "stage", "loss"]].tail(3).to_string(index=False))

# 3. Embed the query and gallery videos, and evaluate: drug identification and MoA.
embeddings, metadata = run.embed(dataset, split=["query", "gallery"], progress=progress)
result = molclip.evaluate(embeddings, metadata)
for task in ("drug", "moa"):
    r = result[task]
    print(f"{task:>4}: mAP {r['mAP']:.1f}  rank-1 {r['rank1']:.1f}  rank-5 {r['rank5']:.1f}")

# 4. Zero-shot: the MoA of a drug from its structure alone.
top = run.predict_smiles({"aspirin": "CC(=O)Oc1ccccc1C(=O)O"}, top=3, progress=progress)[0]
print("aspirin:", ", ".join(f"{m['moa']} ({m['score']:.2f})" for m in top["moas"]))

# 5. A t-SNE map of the embeddings, one colour per MoA (drugs outside the MoA task in grey).
xy = molclip.tsne(embeddings, perplexity=15)
fig, ax = plt.subplots(figsize=(6, 5))
for moa, rows in metadata.groupby("moa").groups.items():
    label = moa or "no MoA task"
    ax.scatter(xy[rows, 0], xy[rows, 1], s=14, label=label, c="lightgrey" if not moa else None)
ax.set_title("MolCLIP embeddings of the tiny dataset (t-SNE, cosine)")
ax.set_xticks([])
ax.set_yticks([])
ax.legend(fontsize=7, loc="best")
fig.tight_layout()
figure = args.out / "tsne.png"
fig.savefig(figure, dpi=120)
print("wrote", figure)
