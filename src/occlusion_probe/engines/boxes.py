"""Boxes of region masks at any spatial rank, shared by the dense and the incremental engine.

A box is a flat tuple of half-open intervals, one (start, stop) pair per spatial axis in axis
order: ``(start_0, stop_0, start_1, stop_1, ...)``. In 2D that is (top, bottom, left, right);
in 1D (start, stop); in 3D (front, back, top, bottom, left, right).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "Box",
    "bounding_boxes",
    "box_rank",
    "box_sides",
    "box_slices",
    "box_volume",
    "union_box",
]

Box = tuple[int, ...]  # (start_0, stop_0, start_1, stop_1, ...), half-open per axis


def box_rank(box: Box) -> int:
    """The number of spatial axes of `box`."""
    return len(box) // 2


def box_sides(box: Box) -> tuple[int, ...]:
    """The length of `box` along every axis."""
    return tuple(box[2 * a + 1] - box[2 * a] for a in range(len(box) // 2))


def box_volume(box: Box) -> int:
    """The number of positions in `box` (its area in 2D)."""
    return math.prod(box_sides(box))


def box_slices(box: Box) -> tuple[slice, ...]:
    """One slice per axis of `box`, for indexing the spatial dims of a map."""
    return tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(len(box) // 2))


def union_box(boxes: Sequence[Box]) -> Box:
    """The bounding box of the union of `boxes` (all of one rank)."""
    out: list[int] = []
    for a in range(len(boxes[0]) // 2):
        out.append(min(b[2 * a] for b in boxes))
        out.append(max(b[2 * a + 1] for b in boxes))
    return tuple(out)


def bounding_boxes(masks: Tensor) -> list[Box | None]:
    """The box of every mask's True positions, None for an empty mask.

    masks : Tensor, shape (R, *spatial), bool, 1 to 3 spatial axes (any rank works), on any
        device; R x sum(spatial) bytes come to the host.

    >>> masks = torch.zeros(2, 4, 5, 6, dtype=torch.bool)
    >>> masks[0, 1:3, 2, 0:4] = True
    >>> bounding_boxes(masks)
    [(1, 3, 2, 3, 0, 4), None]
    """
    # Max-reductions over the bools' bytes are vectorised; `any` over bools is about 4x slower.
    as_bytes = masks.view(torch.uint8)
    rank = masks.dim() - 1
    starts: list[list[int]] = []
    stops: list[list[int]] = []
    nonempty: list[bool] | None = None
    for axis in range(1, rank + 1):
        others = tuple(d for d in range(1, rank + 1) if d != axis)
        line = (as_bytes.amax(dim=others) if others else as_bytes).cpu()  # (R, size)
        size = line.shape[1]
        # argmax returns the first maximum: the first True from either end.
        starts.append(line.argmax(dim=1).tolist())
        stops.append((size - line.flip(1).argmax(dim=1)).tolist())
        if nonempty is None:
            nonempty = [bool(v) for v in line.amax(dim=1).tolist()] if size else [False] * len(line)
    if nonempty is None:  # no spatial axis
        return [None] * masks.shape[0]
    boxes: list[Box | None] = []
    for r, keep in enumerate(nonempty):
        if not keep:
            boxes.append(None)
            continue
        boxes.append(tuple(v for a in range(rank) for v in (starts[a][r], stops[a][r])))
    return boxes
