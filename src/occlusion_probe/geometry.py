"""Shapes at any spatial rank: per-axis arguments, bounding boxes, window lattices, bumps.

Plain functions on tensors and ints, shared by `Regions` and its constructors. Nothing here
knows about `Regions` itself, so every module can use it without an import circle.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe

__all__ = [
    "MAX_RANK",
    "WindowGrid",
    "bounding_box",
    "check_mask_size",
    "cuts",
    "gaussian_bump",
    "per_axis",
    "positive_int",
    "window_grid",
]

# Signals (L), images (H, W) and volumes (D, H, W).
MAX_RANK = 3

# The most mask elements (bools: bytes) `grid` and `sliding_windows` allocate: 4 GiB. More is
# refused before allocating (grid(10**6, 10**6, 1, 1) would be 1 TB).
MAX_MASK_ELEMENTS = 2**32


def positive_int(name: str, value: object) -> int:
    """`value` as an int >= 1, or the library's error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name}: expected a positive int, got {describe(value)}")
    if value < 1:
        raise InputValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def per_axis(name: str, value: object, rank: int) -> tuple[int, ...]:
    """A positive int per spatial axis: an int for every axis, or a sequence of `rank` ints.

    >>> per_axis("window", 4, 3), per_axis("window", (2, 3), 2)
    ((4, 4, 4), (2, 3))
    """
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise InputValueError(
                f"{name}: expected an int or {rank} ints (one per spatial axis), got {value!r}"
            )
        return tuple(positive_int(f"{name}[{axis}]", v) for axis, v in enumerate(value))
    if isinstance(value, (Tensor, np.ndarray)):
        raise InputTypeError(
            f"{name}: expected an int or a tuple of {rank} ints, got {describe(value)}; "
            "pass tuple(value.tolist())"
        )
    size = positive_int(name, value)
    return (size,) * rank


def spatial_shape(name: str, value: object) -> tuple[int, ...]:
    """A shape of 1 to 3 positive ints (signals, images, volumes).

    >>> spatial_shape("shape", (32, 32, 32))
    (32, 32, 32)
    """
    if not isinstance(value, (tuple, list, torch.Size)):
        raise InputTypeError(
            f"{name}: expected a tuple of 1 to {MAX_RANK} positive ints (L,), (H, W) or "
            f"(D, H, W), got {describe(value)}"
        )
    if not 1 <= len(value) <= MAX_RANK:
        raise InputValueError(
            f"{name}: expected 1 to {MAX_RANK} spatial sizes (L,), (H, W) or (D, H, W), "
            f"got {tuple(value)!r}"
        )
    return tuple(positive_int(f"{name}[{axis}]", v) for axis, v in enumerate(value))


def check_mask_size(regions: int, shape: Sequence[int], name: str = "shape") -> None:
    """Refuse masks over `MAX_MASK_ELEMENTS` before they are allocated."""
    elements = regions * math.prod(int(s) for s in shape)
    if elements > MAX_MASK_ELEMENTS:
        size = "x".join(str(s) for s in shape)
        raise InputValueError(
            f"{name}: {regions} regions of {size} pixels need "
            f"{elements / 2**30:.4g} GiB of masks (at most {MAX_MASK_ELEMENTS / 2**30:.0f} GiB); "
            "use smaller inputs, fewer regions, or Regions.from_label_map for a partition"
        )


def cuts(size: int, parts: int) -> list[int]:
    """``floor(i * size / parts)``: parts differ by at most one and tile [0, size) exactly."""
    return [i * size // parts for i in range(parts + 1)]


def axis_extents(masks: Tensor) -> list[Tensor]:
    """Per spatial axis, (R, size) bytes: whether the region has a True at each index of it.

    masks : Tensor, shape (R, *spatial), bool. Max-reductions over the bools' bytes are
    vectorised (``any`` over bools is about 4x slower); results come to the host.
    """
    as_bytes = masks.view(torch.uint8)
    rank = masks.dim() - 1
    extents = []
    for axis in range(1, rank + 1):
        others = tuple(d for d in range(1, rank + 1) if d != axis)
        extents.append(as_bytes.amax(dim=others).cpu() if others else as_bytes.cpu())
    return extents


def bounding_box(mask: Tensor) -> tuple[tuple[int, int], ...]:
    """Half-open (start, stop) per axis of a non-empty bool mask's True positions.

    >>> bounding_box(torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool))
    ((0, 2), (1, 3))
    """
    box = []
    for extent in axis_extents(mask.unsqueeze(0)):
        hits = torch.nonzero(extent[0]).flatten()
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


@dataclass(frozen=True)
class WindowGrid:
    """The geometry of regions that are equal boxes at regular steps (sliding windows).

    Attributes
    ----------
    window : tuple of int, one per spatial axis
        Window size in pixels along each axis.
    stride : tuple of int, one per spatial axis
        Step between window starts along each axis (the window size along an axis with a
        single position).
    starts : tuple of tuple of int, one per spatial axis
        Distinct window starts along each axis, increasing.

    Region number ``r`` (0-based) is the window whose start index along each axis is the
    digit of ``r`` in the mixed radix ``shape`` (row-major: the last axis fastest).

    Examples
    --------
    >>> from occlusion_probe import sliding_windows
    >>> sliding_windows(8, 8, window=4, stride=2).window_grid()
    WindowGrid(window=(4, 4), stride=(2, 2), starts=((0, 2, 4), (0, 2, 4)))
    """

    window: tuple[int, ...]
    stride: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]

    @property
    def ndim(self) -> int:
        """The number of spatial axes."""
        return len(self.window)

    @property
    def shape(self) -> tuple[int, ...]:
        """How many window positions there are along each axis."""
        return tuple(len(s) for s in self.starts)

    @property
    def tops(self) -> tuple[int, ...]:
        """Window starts along the rows (2D windows only)."""
        return self._plane_axis(0, "tops")

    @property
    def lefts(self) -> tuple[int, ...]:
        """Window starts along the columns (2D windows only)."""
        return self._plane_axis(1, "lefts")

    def _plane_axis(self, axis: int, name: str) -> tuple[int, ...]:
        if self.ndim != 2:
            raise InputValueError(
                f"WindowGrid.{name}: defined for 2D windows, these have {self.ndim} spatial "
                "axes; use starts[axis]"
            )
        return self.starts[axis]


def _regular_step(starts: list[int], size: int) -> int | None:
    """The common step of increasing `starts` (`size` for one start), None if irregular."""
    if len(starts) == 1:
        return size
    steps = {b - a for a, b in itertools.pairwise(starts)}
    if len(steps) != 1:
        return None
    step = steps.pop()
    return step if step > 0 else None


def window_grid(masks: Tensor) -> WindowGrid | None:
    """The `WindowGrid` of masks (R, *spatial) that are filled equal boxes on a regular,
    complete, row-major lattice; None otherwise.

    Only per-axis extents and the boxes' own pixels are read (a sum over all of 2,809
    masks of 224 x 224 would take about 1.5 s on 2 CPU cores; this takes a fiftieth).
    """
    extents = axis_extents(masks)
    first = [extent.argmax(dim=1) for extent in extents]
    lengths = [extent.sum(dim=1, dtype=torch.int64) for extent in extents]
    if any(bool((length != length[0]).any()) for length in lengths):
        return None
    window = tuple(int(length[0]) for length in lengths)
    # Each axis has exactly `window` covered indices; when the box of that size at the
    # first ones is all True, those indices are the box's, and the mask is the box.
    index = []
    for axis, (starts, size) in enumerate(zip(first, window, strict=True)):
        shape = [-1] + [1] * len(window)
        shape[axis + 1] = size
        index.append((starts[:, None] + torch.arange(size)).reshape(shape).to(masks.device))
    regions = torch.arange(masks.shape[0], device=masks.device).reshape(-1, *([1] * len(window)))
    if not bool(masks[(regions, *index)].all()):
        return None
    distinct = [sorted(set(starts.tolist())) for starts in first]
    lattice = torch.cartesian_prod(*[torch.tensor(d) for d in distinct])
    lattice = lattice.reshape(-1, len(distinct))
    found = torch.stack(first, dim=1)
    if found.shape != lattice.shape or not torch.equal(found, lattice):
        return None
    steps = [_regular_step(d, w) for d, w in zip(distinct, window, strict=True)]
    if any(step is None for step in steps):
        return None
    return WindowGrid(
        window, tuple(int(s) for s in steps if s is not None), tuple(map(tuple, distinct))
    )


def _erf_kernel(sigma: float, length: int, centre: int) -> Tensor:
    """MONAI's ``gaussian_1d(approx="erf", truncated=4.0)`` at offsets ``i - centre`` for
    i in [0, length), zero beyond its tail: float32 as MONAI computes it."""
    tail = int(max(sigma * 4.0, 0.5) + 0.5)
    offsets = torch.arange(length, dtype=torch.float32) - centre
    scale = 0.70710678 / torch.tensor(sigma, dtype=torch.float32)
    values = 0.5 * (torch.erf(scale * (offsets + 0.5)) - torch.erf(scale * (offsets - 0.5)))
    return torch.where(offsets.abs() <= tail, values.clamp(min=0), torch.zeros_like(values))


def gaussian_bump(size: tuple[int, ...], sigma: float) -> Tensor:
    """MONAI's "gaussian" occlusion weight (1 - its multiplier) over a box of `size`:
    1 at the centre index ``size // 2`` of every axis, scaled so its lowest value is 0."""
    bump = torch.ones(size, dtype=torch.float32)
    for axis, length in enumerate(size):
        kernel = _erf_kernel(sigma * length, length, length // 2)
        shape = [1] * len(size)
        shape[axis] = length
        bump = bump * kernel.reshape(shape)
    low, high = bump.min(), bump.max()
    if float(high - low) == 0.0:
        return torch.ones(size, dtype=torch.float32)
    return (bump - low) / (high - low)
