"""ClassMeanResult: per-true-class sums of a sweep (``reduce="class_mean"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import InputValueError
from ..regions import Regions
from ..selection import check_bool, check_class_names
from ..tables import optional_import
from .readings import ClassReadings, ordinary_tensor
from .summary import class_summary, names_summary

__all__ = ["ClassMeanResult"]


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

    file_kind: ClassVar[str] = "ClassMeanResult"

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

    def __repr__(self) -> str:
        _, k, r, v, _ = self.occluded_sum.shape
        return (
            f"ClassMeanResult(N={self.num_images} images summed, R={r} {self.regions!r}, "
            f"V={v} fills ({names_summary(self.fill_labels)}), "
            f"{class_summary(k, self.class_names)}, output={self.output!r}, "
            f"engine={self.engine!r}, accuracy {self.accuracy:.3f})"
        )

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

    def _stored_arrays(self) -> dict[str, Tensor | np.ndarray | None]:
        return {
            "occluded_sum": self.occluded_sum,
            "baseline_sum": self.baseline_sum,
            "counts": self.counts,
            "confusion": self.confusion,
        }
