"""featurize and morgan against `molclip chem featurize` (records equal, fingerprints
bitwise), and their error handling."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import molclip
from conftest import SHARED, cli


def launched(n: int = 300) -> tuple[list[str], list[str]]:
    """Names and SMILES of real drugs (../shared/data/launched_drugs.tsv)."""
    with open(SHARED / "data" / "launched_drugs.tsv", newline="") as f:
        rows = [r for r in csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")]
    rows = [r for r in rows if r.get("smiles")][:n]
    return [r["name"] for r in rows], [r["smiles"] for r in rows]


@pytest.fixture(scope="module")
def cli_records(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str], list[dict]]:
    names, smiles = launched()
    tmp = tmp_path_factory.mktemp("chem")
    table = tmp / "drugs.tsv"
    table.write_text("name\tsmiles\n" + "".join(f"{n}\t{s}\n" for n, s in zip(names, smiles)))
    cli("chem", "featurize", "--input", str(table), "--output", str(tmp / "out.jsonl"))
    records = [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]
    return names, smiles, records


def test_featurize_gives_the_cli_records(cli_records: tuple[list[str], list[str], list[dict]]) -> None:
    names, smiles, expected = cli_records
    assert len(expected) == len(smiles) > 200
    assert molclip.featurize(smiles, names=names) == expected


def test_morgan_is_the_cli_fingerprint_bit_for_bit(cli_records: tuple[list[str], list[str], list[dict]]) -> None:
    _, smiles, records = cli_records
    fp = molclip.morgan(smiles)
    assert fp.dtype == np.uint8 and fp.shape == (len(smiles), 2048) and fp.flags.c_contiguous
    expected = np.zeros_like(fp)
    for row, record in zip(expected, records):
        row[record["morgan2_2048"]] = 1
    assert np.array_equal(fp, expected)
    # Another radius and width: the record's key follows them.
    small = molclip.morgan(smiles[:20], radius=1, bits=512)
    again = molclip.featurize(smiles[:20], radius=1, bits=512)
    for row, record in zip(small, again):
        assert np.flatnonzero(row).tolist() == record["morgan1_512"]


def test_known_fingerprint() -> None:
    # Ethanol, radius 0: three atom invariants (two carbons differ by their neighbours).
    fp = molclip.morgan(["CCO"], radius=0, bits=2048)
    assert fp.sum() == 3
    assert molclip.featurize(["OCC"])[0]["canonical"] == "CCO"


def test_invalid_smiles_raise_with_index_and_reason() -> None:
    with pytest.raises(molclip.MolclipError, match=r"smiles\[1\].*C1CC"):
        molclip.morgan(["CCO", "C1CC", "c1ccccc1"])
    with pytest.raises(molclip.MolclipError, match=r"smiles\[2\]"):
        molclip.featurize(["CCO", "CC", "not a smiles"])


def test_skip_marks_failed_rows_and_lists_them() -> None:
    fp, errors = molclip.morgan(["CCO", "C1CC", "c1ccccc1"], errors="skip")
    assert [e.index for e in errors] == [1] and errors[0].smiles == "C1CC" and errors[0].reason
    assert (fp[1] == 255).all() and set(np.unique(fp[[0, 2]])) <= {0, 1}
    assert np.array_equal(fp[[0, 2]], molclip.morgan(["CCO", "c1ccccc1"]))
    records, errors = molclip.featurize(["CCO", "xyz"], errors="skip")
    assert records[1] is None and records[0]["smiles"] == "CCO"
    assert errors == [molclip.SmilesError(1, "xyz", errors[0].reason)]


def test_bad_options_are_refused() -> None:
    with pytest.raises(molclip.MolclipError, match="radius 7"):
        molclip.morgan(["CCO"], radius=7)
    with pytest.raises(molclip.MolclipError, match="1000 bits"):
        molclip.morgan(["CCO"], bits=1000)
    with pytest.raises(molclip.MolclipError, match="errors"):
        molclip.morgan(["CCO"], errors="ignore")  # type: ignore[call-overload]
    with pytest.raises(molclip.MolclipError, match="names"):
        molclip.featurize(["CCO"], names=["a", "b"])
