"""Fixtures: the `molclip` binary, a tiny simulated dataset and a tiny MolCLIP run, both
written by the CLI, which the Python API is compared against."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"

# A MolCLIP run small enough for seconds: the demo's quick recipe, one epoch per stage.
TINY_RUN = [
    "--config", str(REPO / "configs" / "molclip.toml"),
    "--epochs", "1",
    "--set", "data.frames.frames=8",
    "--set", "data.augment.resize=36",
    "--set", "data.augment.crop=32",
    "--set", "model.video.i3d.width=8",
    "--set", "data.sampler.p=4",
    "--set", "validate_every=0",
]


def binary() -> Path:
    """The CLI: $MOLCLIP_BIN, else a build in target/ (release first)."""
    given = os.environ.get("MOLCLIP_BIN")
    candidates = [Path(given)] if given else [REPO / "target" / p / "molclip" for p in ("release", "debug")]
    for c in candidates:
        if c.is_file():
            return c
    raise RuntimeError(
        f"no molclip binary at {', '.join(map(str, candidates))}: build it (cargo build --release) "
        "or set MOLCLIP_BIN"
    )


def cli(*args: str) -> str:
    """Runs the CLI quietly; returns its stdout, or fails with its stderr."""
    out = subprocess.run([str(binary()), "--quiet", *args], capture_output=True, text=True)
    assert out.returncode == 0, f"molclip {' '.join(args)}: {out.stderr}"
    return out.stdout


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset (seed 3), written by the CLI."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    cli("simulate", "--preset", "tiny", "--seed", "3", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    """A MolCLIP run on `tiny`, trained by the CLI."""
    out = tmp_path_factory.mktemp("runs") / "molclip"
    cli("train", *TINY_RUN, "--data", str(tiny), "--out", str(out))
    return out


@pytest.fixture(scope="session")
def new_videos(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    """`predict --videos` input: two of the tiny dataset's novel drug folders, as new videos."""
    out = tmp_path_factory.mktemp("new") / "videos"
    novel = sorted(p for p in (tiny / "novel").iterdir() if p.is_dir())[:2]
    assert novel, f"no novel drugs in {tiny}"
    for drug in novel:
        shutil.copytree(drug, out / drug.name)
    return out
