"""simulate(raw=True) and extract: the CLI's raw fields and extracted dataset bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import molclip

from conftest import cli

SIM = "[library]\nmax_moas = 2\n[layout]\nreplicates = 1\nframes = 6\n[raw]\nfield_size = 160\ncells = [5, 7]\n"


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_raw_fields_and_their_extraction_match_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(SIM)
    cli("simulate", "--config", str(config), "--raw", "--out", str(tmp_path / "raw-cli"))
    report = molclip.simulate(config=config, raw=True, out=tmp_path / "raw", progress=False)
    assert report["fields"] == 9 and report["whole_tracks"] <= report["tracks"]
    assert digest(tmp_path / "raw") == digest(tmp_path / "raw-cli")

    cli("extract", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "cells-cli"), "--seed", "2")
    done = molclip.extract(tmp_path / "raw", tmp_path / "cells", seed=2, qc=tmp_path / "qc", progress=False)
    assert done["fields"] == 9 and sum(done["videos"].values()) > 0 and done["unannotated"] == []
    # extract.toml names its raw folder, which differs; everything else is the same.
    ours, theirs = digest(tmp_path / "cells"), digest(tmp_path / "cells-cli")
    assert ours.pop("extract.toml") and theirs.pop("extract.toml")
    assert ours == theirs
    assert len(list((tmp_path / "qc").iterdir())) == 9
    ds = molclip.Dataset(tmp_path / "cells", progress=False)
    assert len(ds) == sum(done["videos"].values())
    assert ds.video(0, channels="rgb").shape[:2] == (6, 3)

    # A config as a dict, checked like the file; a bad split is refused.
    for bad, field in (({"crop": {"margin": 9}}, "crop.margin"), ({"track": {"max_dist": 1}}, "max_dist")):
        try:
            molclip.extract(tmp_path / "raw", tmp_path / "x", config=bad, progress=False)
        except molclip.MolclipError as e:
            assert field in str(e), str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
    try:
        molclip.extract(tmp_path / "raw", tmp_path / "x", split="half", progress=False)
    except molclip.MolclipError as e:
        assert "random, train or novel" in str(e)
    else:
        raise AssertionError("split='half' was accepted")
    assert not (tmp_path / "x").exists()
