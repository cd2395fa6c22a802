"""Drill-down sweeps: coarse windows first, the fine stride only where the coarse map is hot.

``sweep(model, images, sliding_windows(H, W, window, stride), refine=Refine(coarse_stride=...,
top=0.25))`` follows Krypton's adaptive drill-down (Nakandala et al., SIGMOD 2019), per image:

1. the *coarse pass* computes, for every image, the windows whose starts lie on the coarse
   grid (every ``coarse_stride / stride``-th window along each axis, from the first);
2. each fine window belongs to the *cell* of its nearest coarse window (along each axis the
   nearest coarse start; a tie goes to the earlier one), so the cells partition the windows;
3. per image, the cells of the ``ceil(top * coarse windows)`` coarse windows with the largest
   drop of the class output (the image's predicted class, or ``Refine.cls``; averaged over
   the fills) are *refined*: all their windows are computed;
4. every other window takes the outputs of its cell's coarse window (nearest-neighbour fill).

``result.computed`` (N, R) records which windows were computed (the coarse ones and those of
refined cells) and which were filled in; ``engine_note`` says the result is a drill-down.
With ``top=1.0`` every window is computed and the result equals the plain sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .engines.subsets import RegionRunner
from .errors import InputTypeError, InputValueError, describe
from .regions import Regions, WindowGrid

__all__ = ["Refine", "RefinePlan"]


def _stride_pair(value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InputValueError(
                f"Refine.coarse_stride: expected an int or a pair (rows, cols), got {value!r}"
            )
        items = list(value)
    else:
        items = [value, value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise InputTypeError(
                f"Refine.coarse_stride: expected a positive int or a pair of them, got {describe(value)}"
            )
        if item < 1:
            raise InputValueError(
                f"Refine.coarse_stride: expected a positive int or a pair of them, got {value!r}"
            )
    return int(items[0]), int(items[1])


@dataclass(frozen=True)
class Refine:
    """Settings of a drill-down sweep (``sweep(..., refine=Refine(...))``).

    Parameters
    ----------
    coarse_stride : int or (int, int)
        Stride in pixels of the coarse pass: a multiple of the windows' stride along each
        axis (any value along an axis with one window position).
    top : float
        Fraction of the coarse windows, per image, whose cells are computed at the fine
        stride: in (0, 1]; 1.0 computes every window (an exact sweep).
    cls : int, optional
        The class whose output drop ranks the coarse windows; None (the default): each
        image's predicted class (argmax of its unoccluded output).

    Raises
    ------
    InputTypeError, InputValueError
        For a setting of the wrong type or out of range.

    Examples
    --------
    >>> Refine(coarse_stride=8, top=0.25)
    Refine(coarse_stride=(8, 8), top=0.25, cls=None)
    """

    coarse_stride: int | tuple[int, int]
    top: float = 0.25
    cls: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "coarse_stride", _stride_pair(self.coarse_stride))
        top = self.top
        if isinstance(top, bool) or not isinstance(top, (int, float, np.floating)):
            raise InputTypeError(f"Refine.top: expected a float in (0, 1], got {describe(top)}")
        if not 0.0 < float(top) <= 1.0:
            raise InputValueError(f"Refine.top: expected a float in (0, 1], got {top!r}")
        object.__setattr__(self, "top", float(top))
        cls = self.cls
        if cls is not None and (isinstance(cls, bool) or not isinstance(cls, (int, np.integer))):
            raise InputTypeError(
                f"Refine.cls: expected None (predicted class) or a class index, got {describe(cls)}"
            )
        if cls is not None and cls < 0:
            raise InputValueError(f"Refine.cls: expected a class index >= 0, got {cls}")


def _axis_cells(positions: int, factor: int) -> tuple[list[int], list[int]]:
    """Coarse indices along one axis and, per fine index, the position of its nearest
    coarse index in that list (ties to the earlier)."""
    coarse = list(range(0, positions, factor))
    nearest = []
    for index in range(positions):
        quotient, remainder = divmod(index, factor)
        cell = quotient + (1 if 2 * remainder > factor else 0)
        nearest.append(min(cell, len(coarse) - 1))
    return coarse, nearest


class RefinePlan:
    """Which windows a drill-down sweep computes, for one `WindowGrid` and `Refine`.

    Attributes
    ----------
    coarse : list of int
        Positions (on the R axis) of the coarse windows, row-major.
    cell : Tensor, shape (R,), int64
        For every window, the index (into `coarse`) of the coarse window whose cell holds it.
    """

    def __init__(self, regions: Regions, refine: Refine) -> None:
        layout = regions.window_grid()
        if layout is None:
            raise InputValueError(
                "refine: expected regions made by sliding_windows (equal rectangles on a regular "
                f"grid, row-major), got {regions!r}; drill-down needs the windows' geometry"
            )
        self.grid: WindowGrid = layout
        factors = []
        stride_pair = _stride_pair(refine.coarse_stride)
        for axis, name in enumerate(("rows", "columns")):
            count = layout.shape[axis]
            fine, coarse = layout.stride[axis], stride_pair[axis]
            if count == 1:
                factors.append(1)
                continue
            if coarse % fine:
                raise InputValueError(
                    f"refine: coarse_stride {stride_pair} must be a multiple of the windows' "
                    f"stride {layout.stride} along the {name}; got {coarse} for stride {fine}"
                )
            factors.append(coarse // fine)
        self.factors = (factors[0], factors[1])
        self.top = refine.top
        self.cls = refine.cls
        rows, row_cell = _axis_cells(layout.shape[0], factors[0])
        cols, col_cell = _axis_cells(layout.shape[1], factors[1])
        width = layout.shape[1]
        self.coarse = [r * width + c for r in rows for c in cols]
        self.cell = torch.tensor(
            [
                row_cell[i] * len(cols) + col_cell[j]
                for i in range(layout.shape[0])
                for j in range(width)
            ],
            dtype=torch.int64,
        )
        self.num_regions = len(regions)
        self.note = (
            f"DRILL-DOWN: {len(self.coarse)} coarse windows (stride {stride_pair}) for every image, "
            f"then per image the {self.refined_count} coarse cell(s) with the largest drop "
            f"(top {refine.top:g}, {'predicted class' if refine.cls is None else f'class {refine.cls}'}) "
            "at the fine stride; other windows take their cell's coarse outputs "
            "(result.computed says which were computed)"
        )

    @property
    def refined_count(self) -> int:
        """How many coarse cells each image refines."""
        return max(1, math.ceil(self.top * len(self.coarse) - 1e-9))

    def run_chunk(
        self,
        runner: RegionRunner,
        images: Tensor,
        fill_images: Tensor,
        baseline: Tensor,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """The drill-down of one chunk of images.

        images : (n, C, H, W); fill_images : (V, n or 1, ...); baseline : (n, K) unoccluded
        outputs (they rank the coarse windows)
        returns : the incremental engine's unoccluded outputs of the coarse pass (or None),
            occluded (n, R, V, K) with filled-in windows, computed (n, R) bool (on the CPU)
        """
        n, k = baseline.shape
        if self.cls is not None and self.cls >= k:
            raise InputValueError(
                f"refine: Refine.cls must be a class index in [0, {k - 1}], got {self.cls}"
            )
        clean, coarse = runner.run(
            images, fill_images, self.coarse, runner.threshold, on_progress=on_progress
        )
        v = coarse.shape[2]
        cell = self.cell.to(coarse.device)
        occluded = coarse[:, cell].clone()  # (n, R, V, K): every window from its cell
        computed = torch.zeros(n, self.num_regions, dtype=torch.bool)
        computed[:, self.coarse] = True
        if n == 0:
            return clean, occluded, computed
        classes = (
            baseline.argmax(dim=1)
            if self.cls is None
            else torch.full((n,), self.cls, dtype=torch.int64, device=baseline.device)
        ).to(coarse.device)
        index = classes[:, None, None, None].expand(n, len(self.coarse), v, 1)
        unoccluded = baseline.to(coarse.device).gather(1, classes[:, None])  # (n, 1)
        # The drop of the class per coarse window, averaged over the fills: (n, coarse windows).
        drops = unoccluded - coarse.gather(3, index)[..., 0].mean(dim=2)
        chosen = torch.topk(drops.cpu().double(), self.refined_count, dim=1, sorted=False).indices
        cells = self.cell
        coarse_set = torch.zeros(self.num_regions, dtype=torch.bool)
        coarse_set[self.coarse] = True
        for image in range(n):
            wanted = torch.isin(cells, chosen[image]) & ~coarse_set
            positions = torch.nonzero(wanted).flatten().tolist()
            if not positions:
                continue
            _, fine = runner.run(
                images[image : image + 1],
                RegionRunner.images_of(fill_images, image, image + 1),
                positions,
                runner.threshold,
                on_progress=on_progress,
            )
            occluded[image, positions] = fine[0]
            computed[image, positions] = True
        return clean, occluded, computed
