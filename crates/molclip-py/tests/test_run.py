"""Run and train: embeddings bitwise equal to the CLI's, predictions equal to `predict
--json`, training equal to the CLI's, and Ctrl-C that leaves a checkpoint to resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import molclip
from conftest import REPO, TINY_RUN, cli


@pytest.fixture(scope="module")
def run(run_dir: Path) -> molclip.Run:
    return molclip.Run(run_dir)


def test_run_config_and_metrics(run: molclip.Run, tiny: Path) -> None:
    assert run.finished and run.config["kind"] == "molclip"
    assert run.config["data"]["augment"]["crop"] == 32
    assert Path(run.trained_on) == tiny.resolve()
    metrics = run.metrics
    assert isinstance(metrics, pd.DataFrame) and len(metrics) > 0
    assert list(metrics.step) == list(range(len(metrics))) and np.isfinite(metrics.loss).all()


def test_embed_is_the_cli_embedding_bitwise(run: molclip.Run, run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    npy = tmp_path / "qg.npy"
    cli("embed", "--run", str(run_dir), "--data", str(tiny), "--split", "query,gallery", "--out", str(npy))
    expected = np.load(npy)
    emb, meta = run.embed(tiny, split=["query", "gallery"], progress=False)
    assert emb.dtype == np.float32 and emb.flags.c_contiguous
    assert np.array_equal(emb, expected)
    written = pd.read_csv(npy.with_suffix(".csv"), keep_default_na=False, dtype=str)
    assert meta.to_dict("list") == written.to_dict("list")
    # The same videos given as arrays, every frame as Dataset.video reads them: the same rows.
    ds = molclip.Dataset(tiny, progress=False)
    rows = [int(i) for i in np.flatnonzero(ds.index.split == "query")]
    videos = np.stack([ds.video(i) for i in rows])
    arrays, none = run.embed(videos, progress=False)
    # Batched as the dataset's query split alone is (a row's last bits depend on its batch).
    query, _ = run.embed(ds, split="query", progress=False)
    assert none is None and np.array_equal(arrays, query)
    assert np.array_equal(arrays[:32], expected[:32])
    floats, _ = run.embed([v.astype(np.float32) / 255 for v in videos[:3]], progress=False)
    assert floats.shape == (3, expected.shape[1]) and np.allclose(floats, expected[:3], atol=1e-3)
    with pytest.raises(molclip.MolclipError, match="3 channels"):
        run.embed([ds.video(0, channels="rgb")], progress=False)


def test_predictions_are_the_cli_predictions(run: molclip.Run, run_dir: Path, new_videos: Path) -> None:
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "CN1CCC[C@H]1c1cccnc1"]
    expected = json.loads(cli("predict", "--run", str(run_dir), "--json", "--top", "3",
                              *[a for s in smiles for a in ("--smiles", s)]))
    assert run.predict_smiles(smiles, top=3, progress=False) == expected
    # Alone in its batch, a molecule's embedding may differ in the last bits.
    named = run.predict_smiles({"aspirin": smiles[0]}, top=3, progress=False)
    assert named[0]["query"] == "aspirin"
    assert [m["moa"] for m in named[0]["moas"]] == [m["moa"] for m in expected[0]["moas"]]
    assert [m["score"] for m in named[0]["moas"]] == pytest.approx([m["score"] for m in expected[0]["moas"]])
    expected = json.loads(cli("predict", "--run", str(run_dir), "--json", "--videos", str(new_videos)))
    assert run.predict_videos(new_videos, progress=False) == expected
    assert len(expected) == 2
    emb = run.embed_smiles(smiles)
    assert emb.shape[0] == 2 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with pytest.raises(molclip.MolclipError, match='invalid SMILES "C1CC"'):
        run.embed_smiles(["C1CC"])


def test_train_is_the_cli_training(tiny: Path, run_dir: Path, tmp_path: Path) -> None:
    args = dict(zip(TINY_RUN[::2], TINY_RUN[1::2]))
    sets = {k: int(v) for k, v in (s.split("=", 1) for s in TINY_RUN[5::2])}
    run = molclip.train(args["--config"], tiny, tmp_path / "run", epochs=1, set=sets, progress=False)
    assert run.finished
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    assert run.config == molclip.Run(run_dir).config


class StopAt(molclip.Bars):
    """Progress that presses Ctrl-C at a training step, as a user would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.steps = step, 0

    def message(self, message: str) -> None:
        self.steps += 1
        if self.steps == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_leaves_a_checkpoint_and_resume_finishes_the_same_run(
    tiny: Path, run_dir: Path, tmp_path: Path
) -> None:
    config = molclip.Run(run_dir).config
    out = tmp_path / "run"
    # Python leaves SIGINT ignored when it starts ignored (a job run in the background by a
    # non-interactive shell): give Ctrl-C its usual meaning for the test, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            molclip.train(config, tiny, out, progress=StopAt(3))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (out / "checkpoints" / "last").is_dir() and not (out / "model.safetensors").exists()
    assert len(pd.read_csv(out / "metrics.csv")) == 3
    # A second run into the same folder is refused; resume continues it.
    with pytest.raises(molclip.MolclipError, match="resume"):
        molclip.train(config, tiny, out, progress=False)
    run = molclip.train(None, tiny, out, resume=True, progress=False)
    assert run.finished
    assert (out / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()
    with pytest.raises(molclip.MolclipError, match="differs"):
        molclip.train(config, tiny, out, resume=True, set={"seed": 5}, progress=False)


def test_train_plan_is_the_cli_dry_run_and_writes_nothing(tiny: Path, run_dir: Path, tmp_path: Path) -> None:
    config, out = REPO / "configs" / "video-only.toml", tmp_path / "planned"
    # The shipped recipe's P = 8 does not fit tiny's 6 MoAs: refused, naming the stage.
    with pytest.raises(molclip.MolclipError, match=r"stage 2 \(moa\).*data\.sampler\.p=6"):
        molclip.train_plan(config, tiny, out, progress=False)
    plan = molclip.train_plan(config, tiny, out, set={"data.sampler.p": 4}, progress=False)
    assert [(s["identity"], s["epochs"]) for s in plan["stages"]] == [("drug", 16), ("moa", 8)]
    assert plan["stages"][1]["classes"] == 6 and not plan["finished"] and plan["done"] == 0
    assert plan["steps"] == sum(s["epochs"] * s["steps_per_epoch"] for s in plan["stages"])
    printed = cli("train", "--config", str(config), "--data", str(tiny), "--out", str(out), "--set", "data.sampler.p=4",
                  "--dry-run")
    assert printed == plan["summary"] + "\nchecked; nothing written (--dry-run)\n"
    assert not out.exists()
    assert molclip.train_plan(None, tiny, run_dir, resume=True, progress=False)["finished"]
