"""molclip from Python: a drug's mechanism of action (MoA) from time-lapse microscopy of
mitochondria, helped by its chemical structure (MolCLIP, MitoReID).

The work is done by molclip's Rust crates, the same code as the ``molclip`` command: the
numbers are the CLI's, bit for bit. NumPy arrays go in and come out without copies where
their layout allows; the GIL is released while Rust works; errors are raised as
:class:`MolclipError` with molclip's message (the file, field, row or SMILES, and what was
expected).

>>> import molclip
>>> molclip.simulate("tiny", out="data/tiny-py", seed=7)
>>> quick = {"data.frames.frames": 8, "data.augment.resize": 36, "data.augment.crop": 32,
...          "model.video.i3d.width": 8, "data.sampler.p": 4}
>>> run = molclip.train("configs/molclip.toml", "data/tiny-py", "runs/tiny-py", epochs=1, set=quick)
>>> emb, meta = run.embed("data/tiny-py", split=["query", "gallery"])
>>> molclip.evaluate(emb, meta)["moa"]["mAP"]
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple, Union, overload

import numpy as np
import pandas as pd

from . import _molclip
from ._molclip import MolclipError, __version__
from ._progress import Bars, sink

__all__ = [
    "Bars",
    "Dataset",
    "Embedded",
    "MolclipError",
    "Run",
    "SmilesError",
    "__version__",
    "evaluate",
    "featurize",
    "morgan",
    "simulate",
    "extract",
    "train",
    "train_plan",
    "tsne",
]

PathLike = Union[str, "os.PathLike[str]"]
Errors = Literal["raise", "skip"]


class SmilesError(NamedTuple):
    """A SMILES that could not be featurised: its position in the input, itself, and why."""

    index: int
    smiles: str
    reason: str


# --- chemistry ---------------------------------------------------------------------------


@overload
def featurize(
    smiles: Sequence[str],
    radius: int = ...,
    bits: int = ...,
    fragments: str = ...,
    names: Optional[Sequence[str]] = ...,
    errors: Literal["raise"] = ...,
) -> List[Dict[str, Any]]: ...
@overload
def featurize(
    smiles: Sequence[str],
    radius: int = ...,
    bits: int = ...,
    fragments: str = ...,
    names: Optional[Sequence[str]] = ...,
    *,
    errors: Literal["skip"],
) -> Tuple[List[Optional[Dict[str, Any]]], List[SmilesError]]: ...
def featurize(
    smiles: Sequence[str],
    radius: int = 2,
    bits: int = 2048,
    fragments: str = "largest",
    names: Optional[Sequence[str]] = None,
    errors: Errors = "raise",
) -> Any:
    """The records of ``molclip chem featurize``, one per SMILES, in order: ``name``,
    ``smiles``, ``canonical`` (RDKit-style), atom and bond counts, the fragment policy, the
    OGB atom and bond features, and the Morgan fingerprint's on-bits under
    ``morgan{radius}_{bits}`` (bit-identical to RDKit's Morgan generator).

    ``fragments``: ``"largest"`` (the largest organic fragment of a salt or mixture) or
    ``"whole"``. ``names`` default to the SMILES themselves.

    ``errors="raise"`` raises :class:`MolclipError` on the first invalid SMILES, naming its
    index and the reason; ``errors="skip"`` returns ``(records, errors)`` where a failed
    SMILES's record is ``None`` and ``errors`` lists them as :class:`SmilesError`.
    """
    text, failures = _molclip.featurize(
        [str(s) for s in smiles],
        names=None if names is None else [str(n) for n in names],
        radius=radius,
        bits=bits,
        fragments=fragments,
        errors=errors,
    )
    records: List[Optional[Dict[str, Any]]] = json.loads(text)
    if errors == "raise":
        return records
    for index, _, _ in failures:
        records[index] = None
    return records, [SmilesError(*f) for f in failures]


@overload
def morgan(
    smiles: Sequence[str], radius: int = ..., bits: int = ..., fragments: str = ..., errors: Literal["raise"] = ...
) -> np.ndarray: ...
@overload
def morgan(
    smiles: Sequence[str], radius: int = ..., bits: int = ..., fragments: str = ..., *, errors: Literal["skip"]
) -> Tuple[np.ndarray, List[SmilesError]]: ...
def morgan(
    smiles: Sequence[str], radius: int = 2, bits: int = 2048, fragments: str = "largest", errors: Errors = "raise"
) -> Any:
    """Dense Morgan fingerprints, ``np.ndarray[uint8]`` of shape ``(n, bits)`` holding 0 or 1,
    bit-identical to RDKit's ``GetMorganGenerator(radius, fpSize=bits)``; ``radius`` 0 to 3,
    ``bits`` 128 to 2048 (powers of two).

    ``errors="raise"`` raises :class:`MolclipError` on the first invalid SMILES (its index and
    the reason); ``errors="skip"`` returns ``(fingerprints, errors)`` with a failed SMILES's
    row all 255 (``np.uint8(-1)``) and ``errors`` a list of :class:`SmilesError`.
    """
    array, failures = _molclip.morgan(
        [str(s) for s in smiles], radius=radius, bits=bits, fragments=fragments, errors=errors
    )
    if errors == "raise":
        return array
    return array, [SmilesError(*f) for f in failures]


# --- evaluation --------------------------------------------------------------------------

Metadata = Union[pd.DataFrame, Mapping[str, Sequence[Any]]]


def _label(value: Any) -> str:
    """A label as the metadata CSV holds it: missing values (None, NaN) are empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _label_columns(metadata: Metadata) -> Dict[str, List[str]]:
    columns = metadata if isinstance(metadata, Mapping) else {c: metadata[c] for c in metadata.columns}
    role = "set" if "set" in columns else "split"
    missing = [c for c in (role, "replicate", "drug", "moa") if c not in columns]
    if missing:
        raise MolclipError(
            f"metadata: missing column(s) {', '.join(missing)} (expected set, replicate, drug, moa; "
            f"found {', '.join(map(str, columns))})"
        )
    out = {name: [_label(v) for v in columns[c]] for name, c in
           (("set", role), ("replicate", "replicate"), ("drug", "drug"), ("moa", "moa"))}
    return out


def evaluate(embeddings: np.ndarray, metadata: Metadata, max_rank: int = 50, novel_k: int = 10) -> Dict[str, Any]:
    """Re-identification metrics (MitoReID protocol), the dict ``molclip evaluate --json``
    writes: ``drug`` and ``moa`` (``mAP``, ``rank1``, ``rank5``, ``rank10``, ``cmc``,
    ``valid_queries``; percentages) and, with novel rows, ``novel``.

    ``embeddings``: ``(N, D)`` float32 or float64, one row per video (C-contiguous arrays are
    read in place, others copied once). ``metadata``: a DataFrame or a dict of columns with
    one value per row: ``set`` (or ``split``: query, gallery, novel or train), ``replicate``,
    ``drug`` and ``moa`` (empty or missing outside the MoA task).
    """
    array = np.asarray(embeddings)
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"embeddings: expected float32 or float64, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array (videos x features), got shape {array.shape}")
    columns = _label_columns(metadata)
    return json.loads(
        _molclip.evaluate(
            np.ascontiguousarray(array),
            columns["set"],
            columns["replicate"],
            columns["drug"],
            columns["moa"],
            max_rank=max_rank,
            novel_k=novel_k,
        )
    )


def tsne(embeddings: np.ndarray, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates, float64 ``(n, 2)``, of ``embeddings`` (``(n, d)``, n >= 4) under
    cosine distances, as retrieval compares them: the map of ``molclip report``. Exact
    (O(n^2)): meant for up to a few thousand points. Deterministic for a ``seed``."""
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array, got shape {array.shape}")
    return _molclip.tsne(array, perplexity=perplexity, iterations=iterations, seed=seed)


# --- data --------------------------------------------------------------------------------


def simulate(
    preset: str = "tiny",
    *,
    out: PathLike,
    config: Optional[PathLike] = None,
    seed: Optional[int] = None,
    structure_coupling: Optional[float] = None,
    force: bool = False,
    progress: Any = True,
    raw: bool = False,
    raw_format: Optional[str] = None,
    field_size: Optional[int] = None,
) -> Dict[str, Any]:
    """Write a simulated MitoDataset (MitoReID layout) into ``out``, as ``molclip simulate``:
    ``preset`` is ``tiny``, ``demo``, ``bench`` or ``mito``, or ``config`` a simulation
    TOML (a dataset's ``simulation.toml`` rebuilds it bit for bit). ``seed`` (preset: 0)
    fixes everything; ``structure_coupling`` (preset: 0.7), in [0, 1], is how much drug
    effects follow structure. ``force`` replaces an existing dataset molclip wrote.

    Returns what was written: ``path``, ``moas``, ``drugs``, ``novel_drugs``, ``cells``,
    ``frames``, ``size``, ``seconds``.

    With ``raw=True``, raw fields of view instead, as ``molclip simulate --raw``: many cells
    of one drug per field in three stains, in MitoReID's raw naming or OME-TIFF
    (``raw_format="mitoreid"`` or ``"ome-tiff"``), ``field_size`` pixels square, with
    ground-truth masks and tracks under ``out/ground_truth``; for :func:`extract`. Returns
    ``path``, ``fields``, ``tracks``, ``whole_tracks``, ``seconds``.
    """
    if raw:
        return _molclip.simulate_raw(
            os.fspath(out),
            preset=preset,
            config=None if config is None else os.fspath(config),
            seed=seed,
            field_size=field_size,
            raw_format=raw_format,
            force=force,
            progress=sink(progress),
        )
    if raw_format is not None or field_size is not None:
        raise ValueError("raw_format and field_size apply to raw=True only")
    return _molclip.simulate(
        os.fspath(out),
        preset=preset,
        config=None if config is None else os.fspath(config),
        seed=seed,
        structure_coupling=structure_coupling,
        force=force,
        progress=sink(progress),
    )


def extract(
    raw: PathLike,
    out: PathLike,
    *,
    config: Union[PathLike, Mapping[str, Any], None] = None,
    split: str = "random",
    seed: int = 0,
    format: Optional[str] = None,
    annotation: Optional[PathLike] = None,
    masks: Optional[PathLike] = None,
    qc: Optional[PathLike] = None,
    force: bool = False,
    progress: Any = True,
) -> Dict[str, Any]:
    """Raw time-lapse fields of view to single-cell videos in the MitoReID layout, as
    ``molclip extract``: nuclei and cells segmented, tracked over time, cropped and written
    into the dataset ``out``, which :class:`Dataset` and :func:`train` read.

    ``config``: a TOML file (configs/extract.toml has every field) or the same as a dict
    (``{"segment": {"nucleus_sigma": 3.0}}``); ``split``: ``random`` (80/20 per field,
    seeded by ``seed``), ``train`` or ``novel``; ``format``: ``jpeg`` or ``tiff``;
    ``annotation``: the drug table if ``raw`` has none; ``masks``: label masks to use
    instead of segmenting and tracking; ``qc``: a folder for an overlay PNG per field;
    ``force`` replaces an earlier extraction.

    Returns ``path``, ``fields``, ``frames``, ``tracks``, ``videos`` (per split),
    ``unannotated`` (fields whose drug has no annotation row) and ``seconds``.
    """
    config_path = config_json = None
    if isinstance(config, Mapping):
        config_json = json.dumps(config)
    elif config is not None:
        config_path = os.fspath(config)
    path = lambda p: None if p is None else os.fspath(p)  # noqa: E731
    return _molclip.extract(
        os.fspath(raw),
        os.fspath(out),
        config_path=config_path,
        config_json=config_json,
        split=split,
        seed=seed,
        format=format,
        annotation=path(annotation),
        masks=path(masks),
        qc=path(qc),
        force=force,
        progress=sink(progress),
    )


class Dataset:
    """A dataset: a MitoReID-layout folder (the published MitoDataset, or a simulated one)
    or a manifest CSV, scanned and validated once.

    ``index`` is a DataFrame with one row per video; ``video(i)`` reads one.
    """

    def __init__(self, path: PathLike, progress: Any = True) -> None:
        self._native = _molclip.Dataset(os.fspath(path), progress=sink(progress))
        self._index: Optional[pd.DataFrame] = None

    @property
    def path(self) -> str:
        """The dataset's path, as given."""
        return str(self._native.path)

    @property
    def root(self) -> str:
        """The folder the index's paths are relative to."""
        return str(self._native.root)

    @property
    def index(self) -> pd.DataFrame:
        """One row per video, in scan order: ``path`` (relative to :attr:`root`), ``split``
        (train, query, gallery, novel), ``replicate``, ``drug`` (the key ``evaluate`` uses),
        ``drug_name``, ``moa`` (empty outside the MoA task), ``frames``, ``height``, ``width``."""
        if self._index is None:
            self._index = pd.DataFrame(self._native.columns())
        return self._index.copy()

    def __len__(self) -> int:
        return len(self._native)

    def video(self, i: int, channels: Union[str, Sequence[int], None] = None) -> np.ndarray:
        """Every frame of video ``i`` as ``(T, C, H, W)``, at the source's depth (``uint8``
        for 8-bit frames, ``uint16`` for deeper ones). ``channels``: ``"grey"`` (default:
        colour as luminance), ``"rgb"``, or a list of channel indices."""
        if i < 0:
            i += len(self)
        return self._native.video(i, channels=None if channels is None else channels)

    def __repr__(self) -> str:
        return f"Dataset({self.path!r}: {len(self)} videos)"


def _dataset(data: Union["Dataset", PathLike], progress: Any) -> "_molclip.Dataset":
    return data._native if isinstance(data, Dataset) else Dataset(data, progress)._native


# --- runs --------------------------------------------------------------------------------


class Embedded(NamedTuple):
    """Embeddings (float32, ``(N, D)``) and, for a dataset's videos, their metadata (the
    ``evaluate`` schema: ``set``, ``replicate``, ``drug``, ``moa``, and ``path``)."""

    embeddings: np.ndarray
    metadata: Optional[pd.DataFrame]


Videos = Union[np.ndarray, Sequence[np.ndarray]]


class Run:
    """A run folder written by ``molclip train`` (or :func:`train`); its model is loaded on
    first use and kept, on ``device`` (``cpu``, ``cuda``, ``cuda:N``)."""

    def __init__(self, path: PathLike, device: str = "cpu") -> None:
        self._native = _molclip.Run(os.fspath(path), device=device)

    @property
    def path(self) -> str:
        return str(self._native.path)

    @property
    def config(self) -> Dict[str, Any]:
        """The resolved config the run trained with (run.toml), as a dict."""
        return json.loads(self._native.config_json())

    @property
    def metrics(self) -> pd.DataFrame:
        """The training log (metrics.csv): one row per step, with the loss terms, learning
        rate, temperature, gradient norm and validation mAPs."""
        return pd.read_csv(self._native.metrics_path)

    @property
    def finished(self) -> bool:
        """Whether training finished (final weights written)."""
        return bool(self._native.finished)

    @property
    def trained_on(self) -> str:
        """The dataset the run trained on."""
        return str(self._native.trained_on())

    def embed(
        self,
        data: Union[Dataset, PathLike, Videos],
        split: Union[str, Sequence[str]] = ("query", "gallery"),
        batch: int = 32,
        progress: Any = True,
    ) -> Embedded:
        """Retrieval features (the BNNeck feature) of videos, as ``molclip embed`` computes
        them.

        ``data`` is a :class:`Dataset` or its path (then ``split`` says which videos, in that
        order, and the metadata comes back too), or videos in memory: a ``(N, T, C, H, W)``
        array or a list of ``(T, C, H, W)`` arrays with every frame, ``uint8``/``uint16``
        samples or floats in [0, 1] (as :meth:`Dataset.video` gives them); these are sampled,
        resized and cropped as the run's config says, and have no metadata.
        """
        if isinstance(data, np.ndarray) or (
            isinstance(data, (list, tuple)) and len(data) > 0 and isinstance(data[0], np.ndarray)
        ):
            videos = list(data) if isinstance(data, np.ndarray) and data.ndim == 5 else data
            if isinstance(videos, np.ndarray):
                raise ValueError(f"videos: expected (N, T, C, H, W) or a list of (T, C, H, W), got {videos.shape}")
            arrays = [np.ascontiguousarray(v) for v in videos]
            return Embedded(self._native.embed_frames(arrays, batch=batch, progress=sink(progress)), None)
        splits = [split] if isinstance(split, str) else list(split)
        dataset = _dataset(data, progress)  # type: ignore[arg-type]
        array, columns = self._native.embed_dataset(dataset, splits, batch=batch, progress=sink(progress))
        return Embedded(array, pd.DataFrame(columns))

    def embed_smiles(self, smiles: Sequence[str]) -> np.ndarray:
        """Unit-norm shared-space embeddings of molecules (MolCLIP runs), float32 ``(n, d)``:
        comparable with the videos' shared-space embeddings by cosine."""
        return self._native.embed_smiles([str(s) for s in smiles])

    def _reference(self, data: Union[Dataset, PathLike, None], progress: Any) -> "_molclip.Dataset":
        return _dataset(self.trained_on if data is None else data, progress)

    def predict_videos(
        self,
        videos: PathLike,
        data: Union[Dataset, PathLike, None] = None,
        top: int = 5,
        nearest: int = 3,
        progress: Any = True,
    ) -> List[Dict[str, Any]]:
        """``molclip predict --videos``: for each drug folder of ``videos``
        (``DIR/<drug>/<cell>/``), its MoAs ranked against ``data``'s gallery (default: the
        dataset the run trained on), the ``top`` first, and its ``nearest`` reference drugs."""
        out = json.loads(
            self._native.predict_videos(
                os.fspath(videos), self._reference(data, progress), nearest=nearest, progress=sink(progress)
            )
        )
        return _top(out, top)

    def predict_smiles(
        self,
        smiles: Union[Sequence[str], Mapping[str, str]],
        data: Union[Dataset, PathLike, None] = None,
        top: int = 5,
        nearest: int = 3,
        progress: Any = True,
    ) -> List[Dict[str, Any]]:
        """``molclip predict --smiles``: zero-shot MoA of new drugs from their structure alone
        (MolCLIP runs), ranked against ``data``'s gallery (default: the dataset the run
        trained on). ``smiles``: a list (each named by itself) or a dict name -> SMILES."""
        if isinstance(smiles, Mapping):
            names, values = [str(k) for k in smiles], [str(v) for v in smiles.values()]
        else:
            names = values = [str(s) for s in smiles]
        out = json.loads(
            self._native.predict_smiles(
                names, values, self._reference(data, progress), nearest=nearest, progress=sink(progress)
            )
        )
        return _top(out, top)

    def __repr__(self) -> str:
        return f"Run({self.path!r})"


def _top(predictions: List[Dict[str, Any]], top: int) -> List[Dict[str, Any]]:
    if top < 1:
        raise ValueError("top: expected at least 1")
    for p in predictions:
        p["moas"] = p["moas"][:top]
    return predictions


def _toml_value(value: Any) -> str:
    """A Python value as a ``--set`` value (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, (str, list, tuple)) else str(value)


def train(
    config: Union[PathLike, Mapping[str, Any], None],
    data: PathLike,
    out: PathLike,
    resume: bool = False,
    *,
    epochs: Optional[int] = None,
    set: Optional[Mapping[str, Any]] = None,
    init: Optional[PathLike] = None,
    device: str = "cpu",
    check_frames: bool = True,
    progress: Any = True,
) -> Run:
    """Train a model (molclip, video-only or single-frame) into the run folder ``out``, as
    ``molclip train`` does, and return the :class:`Run`.

    ``config``: a TOML file (see configs/) or the same as a dict; with ``resume=True`` it may
    be ``None`` (the run's own is used, and anything given must match it). ``epochs`` caps
    every stage; ``set`` overrides fields by dotted path (``{"data.sampler.p": 4}``);
    ``init`` starts from pretrained weights. All are recorded in run.toml.

    Ctrl-C (KeyboardInterrupt, or the stop button in Jupyter) stops at the end of the current
    step and leaves a checkpoint there; ``resume=True`` continues, with the same numbers as
    an uninterrupted run.
    """
    _train(config, data, out, resume, epochs, set, init, device, check_frames, progress, dry_run=False)
    return Run(out, device=device)


def train_plan(
    config: Union[PathLike, Mapping[str, Any], None],
    data: PathLike,
    out: PathLike,
    resume: bool = False,
    *,
    epochs: Optional[int] = None,
    set: Optional[Mapping[str, Any]] = None,
    init: Optional[PathLike] = None,
    device: str = "cpu",
    check_frames: bool = True,
    progress: Any = True,
) -> Dict[str, Any]:
    """What :func:`train` with the same arguments would do, checked as it checks before its
    first step (every frame, the run folder, the config, ``init``'s weights, every stage's
    P x K batches), with nothing written: ``molclip train --dry-run``.

    Returns a dict: ``videos`` (training videos), ``steps`` (about: the first epoch's count
    for every epoch), ``done`` and ``finished`` (a resumed run), ``stages`` (each with
    ``identity``, ``classes``, ``videos``, ``epochs``, ``steps_per_epoch``) and ``summary``
    (the CLI's text). A config that cannot train raises :class:`MolclipError`.
    """
    return _train(config, data, out, resume, epochs, set, init, device, check_frames, progress, dry_run=True)


def _train(
    config: Union[PathLike, Mapping[str, Any], None],
    data: PathLike,
    out: PathLike,
    resume: bool,
    epochs: Optional[int],
    set: Optional[Mapping[str, Any]],
    init: Optional[PathLike],
    device: str,
    check_frames: bool,
    progress: Any,
    dry_run: bool,
) -> Dict[str, Any]:
    config_path = config_json = None
    if isinstance(config, Mapping):
        config_json = json.dumps(config)
    elif config is not None:
        config_path = os.fspath(config)
    sets = [(str(k), _toml_value(v)) for k, v in (set or {}).items()]
    return _molclip.train(
        os.fspath(data),
        os.fspath(out),
        config_path=config_path,
        config_json=config_json,
        resume=resume,
        epochs=epochs,
        sets=sets,
        init=None if init is None else os.fspath(init),
        device=device,
        check_frames=check_frames,
        progress=sink(progress),
        dry_run=dry_run,
    )
