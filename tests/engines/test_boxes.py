"""Bounding boxes of region masks, against a loop over pixels."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from occlusion_probe.engines.boxes import bounding_boxes

MASKS = st.lists(
    st.lists(st.booleans(), min_size=35, max_size=35).map(
        lambda bits: torch.tensor(bits).reshape(5, 7)
    ),
    min_size=0,
    max_size=4,
)


def _pixel_loop_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    points = [(y, x) for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    if not points:
        return None
    ys, xs = [p[0] for p in points], [p[1] for p in points]
    return min(ys), max(ys) + 1, min(xs), max(xs) + 1


@settings(max_examples=60, deadline=None)
@given(MASKS)
def test_bounding_boxes_match_a_pixel_loop(mask_list: list[Tensor]) -> None:
    masks = torch.stack(mask_list) if mask_list else torch.zeros(0, 5, 7, dtype=torch.bool)
    assert bounding_boxes(masks) == [_pixel_loop_box(mask) for mask in masks]


def test_bounding_boxes_of_non_contiguous_masks() -> None:
    masks = torch.zeros(7, 5, 3, dtype=torch.bool)
    masks[2:4, 1, 0] = True
    transposed = masks.permute(2, 1, 0)  # (3, 5, 7), not contiguous
    assert bounding_boxes(transposed) == [(1, 2, 2, 4), None, None]
