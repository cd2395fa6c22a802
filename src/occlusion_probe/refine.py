"""Drill-down sweeps: coarse windows first, the fine stride only where the coarse map is hot.

``sweep(model, images, sliding_windows(shape, window, stride), refine=Refine(coarse_stride=...,
top=0.25))`` (signals, images or volumes) follows Krypton's adaptive drill-down (Nakandala et al., SIGMOD 2019), per image:

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

With a target, ``Refine(..., ssim=0.9)``, the fraction is chosen on calibration images (the
sweep's first, `occlusion_probe.calibration`): their exact sweep is computed, and the smallest
of ``top, 2 top, 4 top, ..., 1.0`` whose drill-down heat maps reach the target SSIM and
R^2 against exact is used for the whole sweep. The result's ``fidelity`` then holds what its own outputs
on those images measured against exact.
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
from .fidelity import check_calibration_images, check_fraction
from .regions import Regions, WindowGrid

__all__ = ["Refine", "RefinePlan"]


def _coarse_stride(value: object) -> int | tuple[int, ...]:
    """`value` as a positive int, or a tuple of 1 to 3 of them (one per spatial axis)."""
    expected = "a positive int or a tuple of them (one per spatial axis)"
    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise InputValueError(f"Refine.coarse_stride: expected {expected}, got {value!r}")
        items = list(value)
    else:
        items = [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise InputTypeError(
                f"Refine.coarse_stride: expected {expected}, got {describe(value)}"
            )
        if item < 1:
            raise InputValueError(f"Refine.coarse_stride: expected {expected}, got {value!r}")
    if isinstance(value, (tuple, list)):
        return tuple(int(item) for item in items)
    return int(items[0])


@dataclass(frozen=True)
class Refine:
    """Settings of a drill-down sweep (``sweep(..., refine=Refine(...))``).

    Parameters
    ----------
    coarse_stride : int or tuple of int
        Stride in pixels of the coarse pass, one int for every axis or one per spatial axis:
        a multiple of the windows' stride along each axis (any value along an axis with one
        window position).
    top : float
        Fraction of the coarse windows, per image, whose cells are computed at the fine
        stride: in (0, 1]; 1.0 computes every window (an exact sweep).
    cls : int, optional
        The class whose output drop ranks the coarse windows; None (the default): each
        image's predicted class (argmax of its unoccluded output).
    ssim : float, optional
        A target fidelity in (0, 1]: `top` becomes the smallest of ``top * 2**k`` (and 1.0)
        whose heat maps reach this mean SSIM and R^2 against exact on the calibration
        images (`occlusion_probe.fidelity.Fidelity.reached`), and the
        result's ``fidelity`` says what was measured. None (the default): `top` as given, no
        calibration, no fidelity (``result.computed`` still says what was computed).
    calibration_images : int
        How many of the first images calibrate `top` when `ssim` is given (they are swept
        exactly once more).

    Raises
    ------
    InputTypeError, InputValueError
        For a setting of the wrong type or out of range.

    Examples
    --------
    >>> Refine(coarse_stride=8, top=0.25)
    Refine(coarse_stride=8, top=0.25, cls=None, ssim=None, calibration_images=4)
    >>> Refine(coarse_stride=8, top=0.1, ssim=0.9).candidate_tops()
    (0.1, 0.2, 0.4, 0.8, 1.0)
    """

    coarse_stride: int | tuple[int, ...]
    top: float = 0.25
    cls: int | None = None
    ssim: float | None = None
    calibration_images: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "coarse_stride", _coarse_stride(self.coarse_stride))
        object.__setattr__(self, "top", check_fraction("Refine.top", self.top))
        cls = self.cls
        if cls is not None and (isinstance(cls, bool) or not isinstance(cls, (int, np.integer))):
            raise InputTypeError(
                f"Refine.cls: expected None (predicted class) or a class index, got {describe(cls)}"
            )
        if cls is not None and cls < 0:
            raise InputValueError(f"Refine.cls: expected a class index >= 0, got {cls}")
        if self.ssim is not None:
            object.__setattr__(self, "ssim", check_fraction("Refine.ssim", self.ssim))
        object.__setattr__(
            self,
            "calibration_images",
            check_calibration_images("Refine.calibration_images", self.calibration_images),
        )

    def candidate_tops(self) -> tuple[float, ...]:
        """The fractions a target tries, smallest first: `top` doubled until 1.0 (just
        `top` without a target)."""
        if self.ssim is None:
            return (self.top,)
        tops = []
        top = self.top
        while top < 1.0:
            tops.append(top)
            top *= 2
        return (*tops, 1.0)


def _row_major(index: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Flat row-major positions (last axis fastest) of the (P, rank) indices in `shape`."""
    flat = torch.zeros(index.shape[0], dtype=torch.int64)
    for axis, size in enumerate(shape):
        flat = flat * size + index[:, axis]
    return flat


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
                "refine: expected regions made by sliding_windows (equal boxes on a regular "
                f"grid, row-major), got {regions!r}; drill-down needs the windows' geometry"
            )
        self.grid: WindowGrid = layout
        strides = refine.coarse_stride
        if isinstance(strides, tuple) and len(strides) != layout.ndim:
            raise InputValueError(
                f"refine: coarse_stride {strides} has {len(strides)} entries, the windows "
                f"{layout.ndim} spatial axes; give one int, or one per axis"
            )
        coarse_strides = strides if isinstance(strides, tuple) else (strides,) * layout.ndim
        factors = []
        for axis, (count, fine, coarse) in enumerate(
            zip(layout.shape, layout.stride, coarse_strides, strict=True)
        ):
            if count == 1:
                factors.append(1)
                continue
            if coarse % fine:
                raise InputValueError(
                    f"refine: coarse_stride {coarse_strides} must be a multiple of the windows' "
                    f"stride {layout.stride} along axis {axis}; got {coarse} for stride {fine}"
                )
            factors.append(coarse // fine)
        self.factors = tuple(factors)
        self.settings = refine
        #: The fraction of coarse cells refined per image (a target's calibration sets it).
        self.top = refine.top
        axes = [
            _axis_cells(count, factor) for count, factor in zip(layout.shape, factors, strict=True)
        ]
        # Row-major (last axis fastest) positions of the coarse windows and, per window, the
        # row-major index of its cell among the coarse windows.
        fine_shape = layout.shape
        coarse_shape = tuple(len(coarse) for coarse, _ in axes)
        coarse_at = torch.cartesian_prod(*[torch.tensor(c) for c, _ in axes]).reshape(-1, len(axes))
        self.coarse = _row_major(coarse_at, fine_shape).tolist()
        nearest_at = torch.cartesian_prod(*[torch.tensor(n) for _, n in axes]).reshape(
            -1, len(axes)
        )
        self.cell = _row_major(nearest_at, coarse_shape)
        self.num_regions = len(regions)
        self._on_coarse = torch.zeros(self.num_regions, dtype=torch.bool)
        self._on_coarse[self.coarse] = True

    @property
    def note(self) -> str:
        """The drill-down's clause of ``engine_note``."""
        refine = self.settings
        chosen = (
            f"top {self.top:g}"
            if refine.ssim is None
            else f"top {self.top:g}, chosen for SSIM >= {refine.ssim:g}"
        )
        return (
            f"DRILL-DOWN: {len(self.coarse)} coarse windows (stride {refine.coarse_stride}) for "
            f"every image, then per image the {self.refined_count_of(self.top)} coarse cell(s) "
            f"with the largest drop ({chosen}, "
            f"{'predicted class' if refine.cls is None else f'class {refine.cls}'}) "
            "at the fine stride; other windows take their cell's coarse outputs "
            "(result.computed says which were computed)"
        )

    def refined_count_of(self, top: float) -> int:
        """How many coarse cells each image refines at fraction `top`."""
        return max(1, math.ceil(top * len(self.coarse) - 1e-9))

    def _refined(self, coarse: Tensor, baseline: Tensor, top: float) -> Tensor:
        """Which windows each image computes at the fine stride besides the coarse ones.

        coarse : (n, coarse windows, V, K) outputs; baseline : (n, K) unoccluded outputs
        returns : (n, R) bool on the CPU
        """
        n, k = baseline.shape
        cls = self.settings.cls
        if cls is not None and cls >= k:
            raise InputValueError(
                f"refine: Refine.cls must be a class index in [0, {k - 1}], got {cls}"
            )
        if n == 0:
            return torch.zeros(0, self.num_regions, dtype=torch.bool)
        v = coarse.shape[2]
        classes = (
            baseline.argmax(dim=1)
            if cls is None
            else torch.full((n,), cls, dtype=torch.int64, device=baseline.device)
        ).to(coarse.device)
        index = classes[:, None, None, None].expand(n, len(self.coarse), v, 1)
        unoccluded = baseline.to(coarse.device).gather(1, classes[:, None])  # (n, 1)
        # The drop of the class per coarse window, averaged over the fills: (n, coarse windows).
        drops = unoccluded - coarse.gather(3, index)[..., 0].mean(dim=2)
        count = self.refined_count_of(top)
        chosen = torch.topk(drops.cpu().double(), count, dim=1, sorted=False).indices
        wanted = (self.cell[None, :, None] == chosen[:, None, :]).any(dim=2)
        return wanted & ~self._on_coarse

    def from_exact(self, baseline: Tensor, exact: Tensor, top: float) -> Tensor:
        """The outputs a drill-down at fraction `top` gives, built from the exact sweep of the
        same images (its computed windows are the exact ones; calibration compares them).

        baseline : (n, K); exact : (n, R, V, K) -> (n, R, V, K)
        """
        coarse = exact[:, self.coarse]
        occluded = coarse[:, self.cell.to(exact.device)].clone()
        refined = (self._refined(coarse, baseline, top) | self._on_coarse).to(exact.device)
        occluded[refined] = exact[refined]
        return occluded

    def run_chunk(
        self,
        runner: RegionRunner,
        images: Tensor,
        fill_images: Tensor,
        baseline: Tensor,
        threshold: float | None,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """The drill-down of one chunk of images.

        images : (n, C, *spatial); fill_images : (V, n or 1, ...); baseline : (n, K) unoccluded
        outputs (they rank the coarse windows); threshold : the projective-field cap of every
        run (None: exact)
        returns : the incremental engine's unoccluded outputs of the coarse pass (or None),
            occluded (n, R, V, K) with filled-in windows, computed (n, R) bool (on the CPU)
        """
        n = baseline.shape[0]
        clean, coarse = runner.run(
            images, fill_images, self.coarse, threshold, on_progress=on_progress
        )
        occluded = coarse[:, self.cell.to(coarse.device)].clone()  # every window from its cell
        refined = self._refined(coarse, baseline, self.top)
        for image in range(n):
            positions = torch.nonzero(refined[image]).flatten().tolist()
            if not positions:
                continue
            _, fine = runner.run(
                images[image : image + 1],
                RegionRunner.images_of(fill_images, image, image + 1),
                positions,
                threshold,
                on_progress=on_progress,
            )
            occluded[image, positions] = fine[0]
        return clean, occluded, refined | self._on_coarse
