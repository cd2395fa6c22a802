"""Collectors: what a sweep keeps of each chunk's outputs.

`FullCollector` keeps every output (a `SweepResult`); `ClassMeanCollector` keeps running
per-true-class sums and counts (a `ClassMeanResult`), so memory does not grow with N.
Both expose their state as plain arrays for checkpoints and for merging across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import resultfile
from .errors import InputValueError
from .regions import Regions
from .result import ClassReadings, SweepResult, ordinary_tensor
from .selection import check_bool, check_class_names
from .tables import optional_import

__all__ = ["ClassMeanCollector", "ClassMeanResult", "FullCollector"]


@dataclass(frozen=True)
class SweepMeta:
    """What every collector needs to know about the sweep besides the outputs."""

    regions: Regions
    fill_labels: tuple[str, ...]
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, ...]
    output: str
    engine: str
    engine_note: str

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (shallow: `dataclasses.asdict` would copy Regions)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


class FullCollector:
    """Keeps all outputs; `result()` concatenates them into a `SweepResult`."""

    def __init__(self) -> None:
        self.baselines: list[Tensor] = []
        self.occluded: list[Tensor] = []
        self.labels: list[Tensor | None] = []
        # Which input chunk each entry came from, and its size: ranks of a distributed run
        # own interleaved chunks, and the merge puts them back in input order.
        self.chunk_indices: list[int] = []
        self.chunk_sizes: list[int] = []

    def add(
        self, baseline: Tensor, occluded: Tensor, labels: Tensor | None, chunk_index: int = 0
    ) -> None:
        self.chunk_indices.append(chunk_index)
        self.chunk_sizes.append(int(baseline.shape[0]))
        self.baselines.append(baseline)
        self.occluded.append(occluded)
        self.labels.append(labels)

    def last_chunk_state(self) -> dict[str, np.ndarray]:
        """The outputs of the last added chunk as arrays, for a checkpoint's chunk file.

        Returns
        -------
        dict of str to ndarray
            ``baseline`` (n, K), ``occluded`` (n, R, V, K) and, with labels, ``labels`` (n,).
        """
        arrays = {"baseline": self.baselines[-1].numpy(), "occluded": self.occluded[-1].numpy()}
        labels = self.labels[-1]
        if labels is not None:
            arrays["labels"] = labels.numpy()
        return arrays

    def add_chunk_state(
        self, arrays: dict[str, np.ndarray], chunk_index: int, images: int, labels: Tensor | None
    ) -> None:
        """Add a chunk stored by `last_chunk_state`, after checking it fits the chunk.

        Parameters
        ----------
        arrays : dict of str to ndarray
            What `last_chunk_state` returned for that chunk.
        chunk_index : int
            The chunk's index in the input.
        images : int
            How many images the chunk has now.
        labels : Tensor, shape (images,), or None
            The chunk's labels now.

        Raises
        ------
        InputValueError
            When the arrays do not fit the chunk (nothing is added then).
        """
        baseline, occluded = arrays.get("baseline"), arrays.get("occluded")
        if baseline is None or occluded is None or baseline.ndim != 2 or occluded.ndim != 4:
            raise InputValueError("chunk state: expected baseline (n, K) and occluded (n, R, V, K)")
        if baseline.shape[0] != images or occluded.shape[0] != images:
            raise InputValueError(
                f"chunk state: expected {images} images, got {baseline.shape[0]} / {occluded.shape[0]}"
            )
        if self.occluded and tuple(occluded.shape[1:]) != tuple(self.occluded[0].shape[1:]):
            raise InputValueError(
                f"chunk state: expected occluded (n, {tuple(self.occluded[0].shape[1:])}), got "
                f"{occluded.shape}"
            )
        stored = arrays.get("labels")
        if (stored is None) != (labels is None) or (
            stored is not None
            and labels is not None
            and not torch.equal(torch.from_numpy(stored), labels)
        ):
            raise InputValueError("chunk state: its labels differ from the chunk's")
        self.add(
            torch.from_numpy(baseline),
            torch.from_numpy(occluded),
            None if labels is None else labels,
            chunk_index,
        )

    def state(self) -> dict[str, np.ndarray]:
        arrays = {
            "baseline": torch.cat(self.baselines).numpy() if self.baselines else np.zeros((0, 0)),
            "occluded": torch.cat(self.occluded).numpy()
            if self.occluded
            else np.zeros((0, 0, 0, 0)),
            "chunk_indices": np.array(self.chunk_indices, dtype=np.int64),
            "chunk_sizes": np.array(self.chunk_sizes, dtype=np.int64),
        }
        if self.labels and self.labels[0] is not None:
            arrays["labels"] = torch.cat([lab for lab in self.labels if lab is not None]).numpy()
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays["baseline"].shape[0] == 0:
            return
        self.baselines = [torch.from_numpy(arrays["baseline"])]
        self.occluded = [torch.from_numpy(arrays["occluded"])]
        self.labels = [torch.from_numpy(arrays["labels"]) if "labels" in arrays else None]
        # Loaded data is one block; keep per-chunk bookkeeping by splitting it back.
        sizes = [int(s) for s in arrays["chunk_sizes"]]
        self.chunk_indices = [int(i) for i in arrays["chunk_indices"]]
        self.chunk_sizes = sizes
        self.baselines = list(torch.split(self.baselines[0], sizes))
        self.occluded = list(torch.split(self.occluded[0], sizes))
        first = self.labels[0]
        self.labels = list(torch.split(first, sizes)) if first is not None else [None] * len(sizes)

    def result(self, meta: SweepMeta) -> SweepResult:
        with_labels = [lab is not None for lab in self.labels]
        if any(with_labels) and not all(with_labels):
            raise InputValueError("images: some batches carry labels and others do not")
        labels = (
            torch.cat([lab for lab in self.labels if lab is not None]) if all(with_labels) else None
        )
        return SweepResult(
            baseline=torch.cat(self.baselines),
            occluded=torch.cat(self.occluded),
            labels=labels,
            **meta.as_kwargs(),
        )


@dataclass(frozen=True, eq=False)
class ClassMeanResult(ClassReadings):
    """Per-true-class running sums of a sweep (``reduce="class_mean"``): constant memory in N.

    The reading methods (`class_curves`, `mean_drop`, `ranking`, `selected_count`,
    `unoccluded_mean`, `to_xarray`) are those of `SweepResult` (see `ClassReadings`), with
    the same arguments and results; per-image readings (`significance`, `curve_bands`,
    `attribution`) need a full `SweepResult`.

    Attributes
    ----------
    occluded_sum : Tensor, shape (2, K, R, V, K)
        ``occluded_sum[s, c, r, v, k]``: sum of output k over the images of true class c
        (s = 0: all of them, s = 1: only the correctly classified ones).
    baseline_sum : Tensor, shape (2, K, K)
        The same sums for the unoccluded outputs.
    counts : Tensor, shape (2, K), int64
        How many images each sum holds.
    confusion : Tensor, shape (K, K), int64
        Unoccluded predictions: rows = true class, columns = predicted class.
    regions : Regions
        The R regions, in the order of the R axis.
    fill_labels : tuple of str, length V
        A readable name of each fill, as in `SweepResult`.
    class_names : tuple of str or None
        The K class names given to `sweep`, if any.
    image_shape : tuple of int
        Shape of one image as given to `sweep`, as in `SweepResult`.
    output : str
        ``"softmax"``, ``"logits"`` or the name of the callable applied to the model output.
    engine : str
        The engine that computed the outputs: ``"dense"`` or ``"incremental"``.
    engine_note : str
        Why that engine was used.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> result = op.sweep(model, torch.rand(6, 1, 8, 8), op.grid(8, 8, 2, 2),
    ...                   labels=torch.tensor([0, 1, 2, 0, 1, 2]), reduce="class_mean",
    ...                   progress=False)
    >>> tuple(result.occluded_sum.shape), result.num_images
    ((2, 3, 4, 6, 3), 6)
    >>> tuple(result.class_curves(0, correct_only=False).shape)
    (4, 6)
    """

    occluded_sum: Tensor
    baseline_sum: Tensor
    counts: Tensor
    confusion: Tensor
    regions: Regions
    fill_labels: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    image_shape: tuple[int, ...] = ()
    output: str = "softmax"
    engine: str = "dense"
    engine_note: str = ""

    def __post_init__(self) -> None:
        k = int(self.confusion.shape[0])
        expected = {
            "occluded_sum": (2, k, len(self.regions), len(self.fill_labels), k),
            "baseline_sum": (2, k, k),
            "counts": (2, k),
            "confusion": (k, k),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise InputValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
            object.__setattr__(self, name, ordinary_tensor(value))
        object.__setattr__(self, "class_names", check_class_names(self.class_names, k))

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return int(self.confusion.shape[0])

    @property
    def num_images(self) -> int:
        """N, the number of images summed (all true classes)."""
        return int(self.counts[0].sum())

    @property
    def accuracy(self) -> float:
        """Share of unoccluded images whose top class is the true class (NaN for none)."""
        total = int(self.confusion.sum())
        return float(self.confusion.diagonal().sum()) / total if total else float("nan")

    def selected_count(self, cls: object, *, correct_only: bool = True) -> int:
        """How many images the readings of class `cls` use (all images of true class `cls`,
        or only the correctly classified ones when `correct_only`)."""
        index = self.class_index(cls)
        return int(self.counts[int(check_bool("correct_only", correct_only)), index])

    def _occluded_mean(self, index: int, correct_only: bool) -> Tensor:
        which = int(correct_only)
        total = self.occluded_sum[which, index, :, :, index].to(torch.float64)
        return total / int(self.counts[which, index])

    def _baseline_mean(self, index: int, correct_only: bool) -> float:
        which = int(correct_only)
        return float(self.baseline_sum[which, index, index]) / int(self.counts[which, index])

    def to_xarray(self) -> Any:
        """The sums as an ``xarray.Dataset`` with labelled dimensions.

        Variables: ``occluded_sum`` (subset, true_class, region, fill, class),
        ``baseline_sum`` (subset, true_class, class), ``counts`` (subset, true_class) and
        ``confusion`` (true_class, predicted_class). Coordinates: ``subset`` = ``"all"``,
        ``"correct"``; ``region`` = region ids; ``fill`` = fill labels; the class axes =
        class names (indices without names).

        Raises
        ------
        ImportError
            When xarray is not installed (``pip install "occlusion_probe[tables]"``).
        """
        xr = optional_import("xarray", "ClassMeanResult.to_xarray")
        coords = self._coordinates()
        classes = coords["class"]
        coords.update(subset=["all", "correct"], true_class=classes, predicted_class=classes)
        variables = {
            "occluded_sum": (
                ("subset", "true_class", "region", "fill", "class"),
                self.occluded_sum.cpu().numpy(),
            ),
            "baseline_sum": (("subset", "true_class", "class"), self.baseline_sum.cpu().numpy()),
            "counts": (("subset", "true_class"), self.counts.cpu().numpy()),
            "confusion": (("true_class", "predicted_class"), self.confusion.cpu().numpy()),
        }
        return xr.Dataset(variables, coords=coords, attrs={"output": self.output})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the sums and metadata to a checksummed ``.npz`` file (no pickles), atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write; an existing file is replaced.

        Returns
        -------
        Path
            `path` as a `pathlib.Path`.

        Raises
        ------
        ResultFileError
            When a field could not be loaded again (e.g. counts that disagree with confusion).

        Examples
        --------
        >>> import pathlib, tempfile, torch, occlusion_probe as op
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> means = op.sweep(model, torch.rand(4, 1, 8, 8), op.grid(8, 8, 2, 2),
        ...                  labels=[0, 1, 2, 0], reduce="class_mean", progress=False)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     loaded = op.ClassMeanResult.load(means.save(pathlib.Path(folder) / "means.npz"))
        >>> torch.equal(loaded.occluded_sum, means.occluded_sum)
        True
        """
        sums = {
            "occluded_sum": self.occluded_sum,
            "baseline_sum": self.baseline_sum,
            "counts": self.counts,
            "confusion": self.confusion,
        }
        meta = {
            "regions": self.regions,
            "fill_labels": self.fill_labels,
            "class_names": self.class_names,
            "image_shape": self.image_shape,
            "output": self.output,
            "engine": self.engine,
            "engine_note": self.engine_note,
        }
        return resultfile.write_class_means(path, sums, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassMeanResult:
        """Read a result written by `save` (``allow_pickle=False``: nothing is executed).

        Parameters
        ----------
        path : str or os.PathLike
            A file written by `save`.

        Returns
        -------
        ClassMeanResult
            The saved result.

        Raises
        ------
        ResultFileError
            When the file is missing, a directory, truncated or corrupted (its checksum does not
            match), not a ClassMeanResult file, of another format version, or has a field with
            an invalid value; the message names the file and the field.
        """
        return cls(**resultfile.read_class_means(path))


class ClassMeanCollector:
    """Running sums per true class; needs labels. Sums are kept in float64 so that the
    order in which chunks arrive does not change the curves beyond rounding."""

    _KEYS = ("occluded_sum", "baseline_sum", "counts", "confusion")

    def __init__(self) -> None:
        # The four running sums of `ClassMeanResult`, created when the first chunk tells K, R, V.
        self.sums: dict[str, Tensor] = {}
        self._last: dict[str, Tensor] = {}

    def add(
        self, baseline: Tensor, occluded: Tensor, labels: Tensor | None, chunk_index: int = 0
    ) -> None:
        if labels is None:
            raise InputValueError(
                'reduce: "class_mean" needs labels (per-true-class sums); none were given'
            )
        _, r, v, k = occluded.shape
        if not self.sums:
            self.sums = {
                "occluded_sum": torch.zeros((2, k, r, v, k), dtype=torch.float64),
                "baseline_sum": torch.zeros((2, k, k), dtype=torch.float64),
                "counts": torch.zeros((2, k), dtype=torch.int64),
                "confusion": torch.zeros((k, k), dtype=torch.int64),
            }
        # The chunk's own sums are kept: a checkpoint stores them, and replaying them in chunk
        # order repeats exactly these float64 additions, so a resumed run is bit-identical.
        delta = {key: torch.zeros_like(tensor) for key, tensor in self.sums.items()}
        predicted = baseline.argmax(dim=1)
        correct = predicted == labels
        for which, chosen in enumerate((torch.ones_like(correct), correct)):
            onehot = torch.nn.functional.one_hot(labels[chosen], k).to(torch.float64)  # (m, K)
            delta["occluded_sum"][which] = torch.einsum(
                "mc,mrvk->crvk", onehot, occluded[chosen].to(torch.float64)
            )
            delta["baseline_sum"][which] = onehot.T @ baseline[chosen].to(torch.float64)
            delta["counts"][which] = torch.bincount(labels[chosen], minlength=k)
        delta["confusion"] = torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
        self._accumulate(delta)

    def _accumulate(self, delta: dict[str, Tensor]) -> None:
        for key in self._KEYS:
            self.sums[key] += delta[key]
        self._last = delta

    def last_chunk_state(self) -> dict[str, np.ndarray]:
        """The sums of the last added chunk alone (the four arrays of `ClassMeanResult`)."""
        return {key: tensor.numpy() for key, tensor in self._last.items()}

    def add_chunk_state(
        self, arrays: dict[str, np.ndarray], chunk_index: int, images: int, labels: Tensor | None
    ) -> None:
        """Add a chunk's sums stored by `last_chunk_state`, after checking they fit the chunk.

        Parameters
        ----------
        arrays : dict of str to ndarray
            What `last_chunk_state` returned for that chunk.
        chunk_index : int
            The chunk's index in the input (unused: sums do not depend on the order of chunks
            beyond rounding, and the chunk loop replays them in input order).
        images : int
            How many images the chunk has now.
        labels : Tensor, shape (images,), or None
            The chunk's labels now.

        Raises
        ------
        InputValueError
            When the arrays do not fit the chunk (nothing is added then).
        """
        if labels is None:
            raise InputValueError(
                'reduce: "class_mean" needs labels (per-true-class sums); none were given'
            )
        if set(arrays) != set(self._KEYS):
            raise InputValueError(
                f"chunk state: expected arrays {self._KEYS}, got {sorted(arrays)}"
            )
        delta = {key: torch.from_numpy(arrays[key]) for key in self._KEYS}
        k = delta["confusion"].shape[0]
        shapes_ok = (
            delta["confusion"].shape == (k, k)
            and delta["counts"].shape == (2, k)
            and delta["baseline_sum"].shape == (2, k, k)
            and delta["occluded_sum"].dim() == 5
            and all(delta[key].shape == self.sums[key].shape for key in self.sums)
        )
        if not shapes_ok or int(delta["confusion"].sum()) != images:
            raise InputValueError(
                f"chunk state: the stored sums do not fit a chunk of {images} images"
            )
        if not torch.equal(delta["counts"][0], torch.bincount(labels, minlength=k)):
            raise InputValueError("chunk state: its label counts differ from the chunk's labels")
        if not self.sums:
            self.sums = {key: torch.zeros_like(tensor) for key, tensor in delta.items()}
        self._accumulate(delta)

    def state(self) -> dict[str, np.ndarray]:
        return {key: tensor.numpy() for key, tensor in self.sums.items()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "occluded_sum" in arrays:
            self.sums = {key: torch.from_numpy(arrays[key]) for key in self._KEYS}

    def result(self, meta: SweepMeta) -> ClassMeanResult:
        if not self.sums:
            raise InputValueError("images: no image was processed")
        return ClassMeanResult(
            occluded_sum=self.sums["occluded_sum"],
            baseline_sum=self.sums["baseline_sum"],
            counts=self.sums["counts"],
            confusion=self.sums["confusion"],
            **meta.as_kwargs(),
        )
