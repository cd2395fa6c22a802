"""Collectors: what a sweep keeps of each chunk's outputs.

`FullCollector` keeps every output (a `SweepResult`); `ClassMeanCollector` keeps running
per-true-class sums and counts (a `ClassMeanResult`), so memory does not grow with N.
Both expose their state as plain arrays for checkpoints and for merging across ranks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .errors import InputValueError
from .regions import Regions
from .results import ClassMeanResult, SweepResult

__all__ = ["ChunkStateCollector", "ClassMeanCollector", "FullCollector"]


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


class ChunkStateCollector(abc.ABC):
    """What both collectors share: restoring a chunk a checkpoint stored.

    `add_chunk_state` checks the stored arrays (names, ranks, then `_misfit`: do they fit
    this chunk's images and labels, and the chunks before?) and only then adds them, so a
    chunk that does not fit adds nothing.
    """

    #: Stored array name -> its number of dimensions.
    STATE: ClassVar[dict[str, int]]
    #: Arrays that may be absent (labels of a sweep without labels).
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def last_chunk_state(self) -> dict[str, np.ndarray]:
        """The outputs of the last added chunk as arrays, for a checkpoint's chunk file."""

    @abc.abstractmethod
    def _misfit(self, state: dict[str, Tensor], images: int, labels: Tensor | None) -> str | None:
        """Why `state` does not fit a chunk of `images` images and `labels`; None when it does."""

    @abc.abstractmethod
    def _add_state(self, state: dict[str, Tensor], chunk_index: int, labels: Tensor | None) -> None:
        """Add a checked chunk state."""

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
        required = set(self.STATE) - self.OPTIONAL
        if not required <= set(arrays) <= set(self.STATE):
            raise InputValueError(
                f"chunk state: expected arrays {sorted(required)} (and optionally "
                f"{sorted(self.OPTIONAL)}), got {sorted(arrays)}"
            )
        wrong = [key for key, value in arrays.items() if value.ndim != self.STATE[key]]
        if wrong:
            raise InputValueError(
                "chunk state: "
                + ", ".join(f"{k} has {arrays[k].ndim} dims, not {self.STATE[k]}" for k in wrong)
            )
        state = {key: torch.from_numpy(value) for key, value in arrays.items()}
        problem = self._misfit(state, images, labels)
        if problem is not None:
            raise InputValueError(f"chunk state: {problem}")
        self._add_state(state, chunk_index, labels)


class FullCollector(ChunkStateCollector):
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

    STATE: ClassVar[dict[str, int]] = {"baseline": 2, "occluded": 4, "labels": 1}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"labels"})

    def _misfit(self, state: dict[str, Tensor], images: int, labels: Tensor | None) -> str | None:
        baseline, occluded = state["baseline"], state["occluded"]
        if baseline.shape[0] != images or occluded.shape[0] != images:
            return f"expected {images} images, got {baseline.shape[0]} / {occluded.shape[0]}"
        if self.occluded and tuple(occluded.shape[1:]) != tuple(self.occluded[0].shape[1:]):
            return (
                f"expected occluded (n, {tuple(self.occluded[0].shape[1:])}), got "
                f"{tuple(occluded.shape)}"
            )
        stored = state.get("labels")
        if (stored is None) != (labels is None) or (
            stored is not None and labels is not None and not torch.equal(stored, labels)
        ):
            return "its labels differ from the chunk's"
        return None

    def _add_state(self, state: dict[str, Tensor], chunk_index: int, labels: Tensor | None) -> None:
        self.add(state["baseline"], state["occluded"], labels, chunk_index)

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


class ClassMeanCollector(ChunkStateCollector):
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

    STATE: ClassVar[dict[str, int]] = {
        "occluded_sum": 5,
        "baseline_sum": 3,
        "counts": 2,
        "confusion": 2,
    }

    def _misfit(self, state: dict[str, Tensor], images: int, labels: Tensor | None) -> str | None:
        if labels is None:
            raise InputValueError(
                'reduce: "class_mean" needs labels (per-true-class sums); none were given'
            )
        k = state["confusion"].shape[0]
        shapes_ok = (
            state["confusion"].shape == (k, k)
            and state["counts"].shape == (2, k)
            and state["baseline_sum"].shape == (2, k, k)
            and all(state[key].shape == self.sums[key].shape for key in self.sums)
        )
        if not shapes_ok or int(state["confusion"].sum()) != images:
            return f"the stored sums do not fit a chunk of {images} images"
        if not torch.equal(state["counts"][0], torch.bincount(labels, minlength=k)):
            return "its label counts differ from the chunk's labels"
        return None

    def _add_state(self, state: dict[str, Tensor], chunk_index: int, labels: Tensor | None) -> None:
        # Sums do not depend on the order of chunks beyond rounding, and the chunk loop replays
        # them in input order: `chunk_index` is not needed.
        if not self.sums:
            self.sums = {key: torch.zeros_like(tensor) for key, tensor in state.items()}
        self._accumulate(state)

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
