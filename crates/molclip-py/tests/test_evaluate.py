"""evaluate against `molclip evaluate --json` (to 1e-12), its inputs and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import molclip
from conftest import cli


def assert_close(ours: Any, theirs: Any, path: str = "") -> None:
    """Same structure; numbers within 1e-12."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), path
        for k in theirs:
            assert_close(ours[k], theirs[k], f"{path}.{k}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, f"{path}[{i}]")
    elif isinstance(theirs, float):
        assert abs(ours - theirs) <= 1e-12, f"{path}: {ours} vs {theirs}"
    else:
        assert ours == theirs, path


@pytest.fixture(scope="module")
def embedded(run_dir: Path, tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The CLI's embeddings of query, gallery and novel, and its evaluation of them."""
    tmp = tmp_path_factory.mktemp("eval")
    npy = tmp / "e.npy"
    cli("embed", "--run", str(run_dir), "--data", str(tiny), "--split", "query,gallery,novel", "--out", str(npy))
    cli("evaluate", "--embeddings", str(npy), "--metadata", str(npy.with_suffix(".csv")),
        "--json", str(tmp / "r.json"))
    return npy, npy.with_suffix(".csv"), json.loads((tmp / "r.json").read_text())


def test_evaluate_is_the_cli_result(embedded: tuple[Path, Path, dict]) -> None:
    npy, csv, expected = embedded
    features = np.load(npy)
    assert features.dtype == np.float32
    metadata = pd.read_csv(csv, keep_default_na=False)
    ours = molclip.evaluate(features, metadata)
    assert_close(ours, expected)
    assert {"drug", "moa", "novel"} <= ours.keys()
    # float64 is read as it is: the float32 values widened give the same result.
    assert_close(molclip.evaluate(features.astype(np.float64), metadata), expected)
    # A dict of columns, missing MoAs as None, and a non-contiguous view: the same.
    columns = {c: list(metadata[c]) for c in ("set", "replicate", "drug", "moa")}
    columns["moa"] = [m or None for m in columns["moa"]]
    wide = np.repeat(features, 2, axis=1)[:, ::2]
    assert not wide.flags.c_contiguous
    assert_close(molclip.evaluate(wide, columns), expected)


def test_evaluate_by_hand() -> None:
    # Query a = (1, 0.1) is nearer gallery b = (1, 0) (cosine 0.995) than gallery a = (0.9, 0.2)
    # (0.993); query b = (0, 1) is nearer gallery a (0.217) than gallery b (0). Each finds its
    # drug at rank 2: AP 1/2, mAP 50 %, rank-1 0 %, rank-5 100 %. The MoAs follow the drugs.
    emb = np.array([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.9, 0.2]], dtype=np.float32)
    meta = {"set": ["query", "query", "gallery", "gallery"], "replicate": ["l1", "l1", "l2", "l2"],
            "drug": ["a", "b", "b", "a"], "moa": ["x", "y", "y", "x"]}
    r = molclip.evaluate(emb, meta)
    for task in ("drug", "moa"):
        assert r[task]["mAP"] == pytest.approx(50.0, abs=1e-12)
        assert (r[task]["rank1"], r[task]["rank5"], r[task]["valid_queries"]) == (0.0, 100.0, 2)


def test_bad_inputs_are_clear_errors() -> None:
    meta = {"set": ["query", "gallery"], "replicate": ["l1", "l2"], "drug": ["a", "a"], "moa": ["x", "x"]}
    good = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(molclip.MolclipError, match="metadata row 1: embedding row 1: .*not finite"):
        molclip.evaluate(np.array([[1, 0, 0], [np.nan, 1, 1]], dtype=np.float32), meta)
    with pytest.raises(molclip.MolclipError, match="3 metadata rows but 2 embedding rows"):
        molclip.evaluate(good, {k: v + [v[0]] for k, v in meta.items()})
    with pytest.raises(molclip.MolclipError, match="missing column.*drug"):
        molclip.evaluate(good, {k: v for k, v in meta.items() if k != "drug"})
    with pytest.raises(molclip.MolclipError, match="metadata row 0: .*querry"):
        molclip.evaluate(good, {**meta, "set": ["querry", "gallery"]})
    with pytest.raises(molclip.MolclipError, match="no gallery rows"):
        molclip.evaluate(good, {**meta, "set": ["query", "train"]})
    with pytest.raises(TypeError, match="float32 or float64"):
        molclip.evaluate(good.astype(np.int64), meta)
