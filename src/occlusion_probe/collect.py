"""Collectors: what a sweep keeps of each chunk's outputs.

`FullCollector` keeps every output (a `SweepResult`); `ClassMeanCollector` keeps running
per-true-class sums and counts (a `ClassMeanResult`), so memory does not grow with N.
Both expose their state as plain arrays for checkpoints and for merging across ranks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe
from .regions import Regions
from .result import OcclusionProbeWarning, SweepResult

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
            regions=meta.regions,
            fill_labels=meta.fill_labels,
            class_names=meta.class_names,
            image_shape=meta.image_shape,
            output=meta.output,
            engine=meta.engine,
            engine_note=meta.engine_note,
        )


@dataclass(frozen=True, eq=False)
class ClassMeanResult:
    """Per-true-class running sums of a sweep (``reduce="class_mean"``): constant memory in N.

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

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.counts[0].sum())

    @property
    def accuracy(self) -> float:
        total = int(self.confusion.sum())
        return float(self.confusion.diagonal().sum()) / total if total else float("nan")

    def _class_index(self, cls: int | str) -> int:
        if isinstance(cls, str):
            if self.class_names is None or cls not in self.class_names:
                raise InputValueError(
                    f"cls: unknown class name {cls!r}; known names are {self.class_names}"
                )
            return self.class_names.index(cls)
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
            raise InputTypeError(f"cls: expected a class index or name, got {describe(cls)}")
        if not 0 <= int(cls) < self.num_classes:
            raise InputValueError(
                f"cls: expected a class index in [0, {self.num_classes - 1}], got {cls}"
            )
        return int(cls)

    def class_curves(self, cls: int | str, correct_only: bool = True) -> Tensor:
        """Same as `SweepResult.class_curves`: Tensor, shape (R, V)."""
        index = self._class_index(cls)
        which = int(correct_only)
        count = int(self.counts[which, index])
        if count == 0:
            warnings.warn(
                f"class_curves: no image selected for class {cls!r} (correct_only={correct_only}); "
                "the curves are NaN",
                OcclusionProbeWarning,
                stacklevel=2,
            )
            return torch.full(
                self.occluded_sum.shape[2:4], float("nan"), dtype=self.occluded_sum.dtype
            )
        return self.occluded_sum[which, index, :, :, index] / count

    def mean_drop(self, cls: int | str, correct_only: bool = True) -> Tensor:
        """Mean drop of class `cls` per region, averaged over fills: Tensor, shape (R,)."""
        index = self._class_index(cls)
        which = int(correct_only)
        count = int(self.counts[which, index])
        if count == 0:
            raise InputValueError(
                f"cls: no image selected for class {cls!r} (correct_only={correct_only}); nothing to rank"
            )
        baseline = self.baseline_sum[which, index, index] / count
        return baseline - self.occluded_sum[which, index, :, :, index].mean(dim=1) / count

    def ranking(self, cls: int | str, correct_only: bool = True) -> list[int]:
        """Region ids by mean drop of class `cls`, largest first."""
        order = torch.sort(self.mean_drop(cls, correct_only), descending=True, stable=True).indices
        return [self.regions.ids[i] for i in order.tolist()]


class ClassMeanCollector:
    """Running sums per true class; needs labels. Sums are kept in float64 so that the
    order in which chunks arrive does not change the curves beyond rounding."""

    def __init__(self) -> None:
        self.occluded_sum: Tensor | None = None
        self.baseline_sum: Tensor | None = None
        self.counts: Tensor | None = None
        self.confusion: Tensor | None = None

    def add(
        self, baseline: Tensor, occluded: Tensor, labels: Tensor | None, chunk_index: int = 0
    ) -> None:
        if labels is None:
            raise InputValueError(
                'reduce: "class_mean" needs labels (per-true-class sums); none were given'
            )
        _, r, v, k = occluded.shape
        if self.occluded_sum is None:
            self.occluded_sum = torch.zeros((2, k, r, v, k), dtype=torch.float64)
            self.baseline_sum = torch.zeros((2, k, k), dtype=torch.float64)
            self.counts = torch.zeros((2, k), dtype=torch.int64)
            self.confusion = torch.zeros((k, k), dtype=torch.int64)
        assert (
            self.baseline_sum is not None and self.counts is not None and self.confusion is not None
        )
        predicted = baseline.argmax(dim=1)
        correct = predicted == labels
        for which, chosen in enumerate((torch.ones_like(correct), correct)):
            onehot = torch.nn.functional.one_hot(labels[chosen], k).to(torch.float64)  # (m, K)
            self.occluded_sum[which] += torch.einsum(
                "mc,mrvk->crvk", onehot, occluded[chosen].to(torch.float64)
            )
            self.baseline_sum[which] += onehot.T @ baseline[chosen].to(torch.float64)
            self.counts[which] += torch.bincount(labels[chosen], minlength=k)
        self.confusion += torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)

    def state(self) -> dict[str, np.ndarray]:
        if self.occluded_sum is None:
            return {}
        assert (
            self.baseline_sum is not None and self.counts is not None and self.confusion is not None
        )
        return {
            "occluded_sum": self.occluded_sum.numpy(),
            "baseline_sum": self.baseline_sum.numpy(),
            "counts": self.counts.numpy(),
            "confusion": self.confusion.numpy(),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "occluded_sum" not in arrays:
            return
        self.occluded_sum = torch.from_numpy(arrays["occluded_sum"])
        self.baseline_sum = torch.from_numpy(arrays["baseline_sum"])
        self.counts = torch.from_numpy(arrays["counts"])
        self.confusion = torch.from_numpy(arrays["confusion"])

    def result(self, meta: SweepMeta) -> ClassMeanResult:
        if self.occluded_sum is None:
            raise InputValueError("images: no image was processed")
        assert (
            self.baseline_sum is not None and self.counts is not None and self.confusion is not None
        )
        return ClassMeanResult(
            occluded_sum=self.occluded_sum,
            baseline_sum=self.baseline_sum,
            counts=self.counts,
            confusion=self.confusion,
            regions=meta.regions,
            fill_labels=meta.fill_labels,
            class_names=meta.class_names,
            image_shape=meta.image_shape,
            output=meta.output,
            engine=meta.engine,
            engine_note=meta.engine_note,
        )
