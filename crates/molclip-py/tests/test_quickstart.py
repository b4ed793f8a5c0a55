"""The worked example runs headless and draws its figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_quickstart_runs_and_draws_its_map(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"}, timeout=900,
    )
    assert out.returncode == 0, out.stderr
    figure = tmp_path / "tsne.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "moa: mAP" in out.stdout and "aspirin:" in out.stdout
