"""Type stubs of the native module; the documented API is the package ``molclip``."""

from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

class MolclipError(Exception): ...

_Path = Union[str, PathLike[str]]
_RowError = Tuple[int, str, str]

def featurize(
    smiles: List[str],
    names: Optional[List[str]] = None,
    radius: int = 2,
    bits: int = 2048,
    fragments: str = "largest",
    errors: str = "raise",
) -> Tuple[str, List[_RowError]]: ...
def morgan(
    smiles: List[str], radius: int = 2, bits: int = 2048, fragments: str = "largest", errors: str = "raise"
) -> Tuple[npt.NDArray[np.uint8], List[_RowError]]: ...
def evaluate(
    embeddings: Union[npt.NDArray[np.float32], npt.NDArray[np.float64]],
    set: List[str],
    replicate: List[str],
    drug: List[str],
    moa: List[str],
    max_rank: int = 50,
    novel_k: int = 10,
) -> str: ...
def tsne(
    embeddings: npt.NDArray[np.float32], perplexity: float = 30.0, iterations: int = 750, seed: int = 0
) -> npt.NDArray[np.float64]: ...
def simulate(
    out: _Path,
    preset: str = "tiny",
    config: Optional[_Path] = None,
    seed: Optional[int] = None,
    structure_coupling: Optional[float] = None,
    force: bool = False,
    progress: Any = None,
) -> Dict[str, Any]: ...

def simulate_raw(
    out: _Path,
    preset: str = "tiny",
    config: Optional[_Path] = None,
    seed: Optional[int] = None,
    field_size: Optional[int] = None,
    raw_format: Optional[str] = None,
    force: bool = False,
    progress: Any = None,
) -> Dict[str, Any]: ...
def extract(
    raw: _Path,
    out: _Path,
    config_path: Optional[_Path] = None,
    config_json: Optional[str] = None,
    split: str = "random",
    seed: int = 0,
    format: Optional[str] = None,
    annotation: Optional[_Path] = None,
    masks: Optional[_Path] = None,
    qc: Optional[_Path] = None,
    force: bool = False,
    progress: Any = None,
) -> Dict[str, Any]: ...

class Dataset:
    def __init__(self, path: _Path, progress: Any = None) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def root(self) -> str: ...
    def __len__(self) -> int: ...
    def columns(self) -> Dict[str, List[Any]]: ...
    def video(
        self, i: int, channels: Union[str, Sequence[int], None] = None
    ) -> Union[npt.NDArray[np.uint8], npt.NDArray[np.uint16]]: ...

class Run:
    def __init__(self, path: _Path, device: str = "cpu") -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def metrics_path(self) -> str: ...
    @property
    def finished(self) -> bool: ...
    def config_json(self) -> str: ...
    def trained_on(self) -> str: ...
    def embed_dataset(
        self, dataset: Dataset, splits: List[str], batch: int = 32, progress: Any = None
    ) -> Tuple[npt.NDArray[np.float32], Dict[str, List[str]]]: ...
    def embed_frames(
        self, videos: List[npt.NDArray[Any]], batch: int = 32, progress: Any = None
    ) -> npt.NDArray[np.float32]: ...
    def embed_smiles(self, smiles: List[str]) -> npt.NDArray[np.float32]: ...
    def predict_videos(self, videos: _Path, dataset: Dataset, nearest: int = 3, progress: Any = None) -> str: ...
    def predict_smiles(
        self, names: List[str], smiles: List[str], dataset: Dataset, nearest: int = 3, progress: Any = None
    ) -> str: ...

def train(
    data: _Path,
    out: _Path,
    config_path: Optional[_Path] = None,
    config_json: Optional[str] = None,
    resume: bool = False,
    epochs: Optional[int] = None,
    sets: List[Tuple[str, str]] = ...,
    init: Optional[_Path] = None,
    device: str = "cpu",
    check_frames: bool = True,
    progress: Any = None,
    dry_run: bool = False,
) -> Dict[str, Any]: ...
