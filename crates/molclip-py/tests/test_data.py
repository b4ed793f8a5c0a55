"""simulate and Dataset: the CLI's dataset bit for bit, the index, and the frames."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import molclip


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_simulate_writes_the_cli_dataset(tiny: Path, tmp_path: Path) -> None:
    report = molclip.simulate("tiny", out=tmp_path / "tiny", seed=3, progress=False)
    assert report["cells"] == 147 and report["moas"] == 6 and report["novel_drugs"] == 5
    assert digest(tmp_path / "tiny") == digest(tiny)
    # Another seed, another dataset; a bad coupling is refused with its field.
    molclip.simulate("tiny", out=tmp_path / "other", seed=4, progress=False)
    assert digest(tmp_path / "other") != digest(tiny)
    try:
        molclip.simulate("tiny", out=tmp_path / "bad", structure_coupling=2.0, progress=False)
    except molclip.MolclipError as e:
        assert "structure_coupling" in str(e)
    else:
        raise AssertionError("a coupling of 2 was accepted")


def test_dataset_index_and_videos(tiny: Path, run_dir: Path) -> None:
    ds = molclip.Dataset(tiny, progress=False)
    index = ds.index
    assert len(ds) == len(index) == 147
    assert list(index.columns) == ["path", "split", "replicate", "drug", "drug_name", "moa", "frames", "height", "width"]
    assert set(index.split) == {"train", "query", "gallery", "novel"}
    assert (index.frames == 16).all() and (index.height == 64).all()
    # One MoA and one name per drug, as the annotation says.
    assert (index.groupby("drug").moa.nunique() == 1).all()
    assert (index.groupby("drug").drug_name.nunique() == 1).all()
    i = int(np.flatnonzero(index.split == "gallery")[0])
    video = ds.video(i)
    assert video.dtype == np.uint8 and video.shape == (16, 1, 64, 64)
    frames = sorted((Path(ds.root) / index.path[i]).iterdir())
    first = np.asarray(Image.open(frames[0]).convert("L"))
    assert np.array_equal(video[0, 0], first)
    assert ds.video(-1).shape == ds.video(len(ds) - 1).shape
    rgb = ds.video(i, channels="rgb")
    assert rgb.shape == (16, 3, 64, 64)
    try:
        ds.video(len(ds))
    except IndexError as e:
        assert "147 videos" in str(e)
    else:
        raise AssertionError("an index past the end was accepted")


def test_a_missing_dataset_names_its_path(tmp_path: Path) -> None:
    try:
        molclip.Dataset(tmp_path / "nowhere", progress=False)
    except molclip.MolclipError as e:
        assert "nowhere" in str(e)
    else:
        raise AssertionError("a missing folder was accepted")
