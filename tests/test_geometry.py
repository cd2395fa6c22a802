"""occlusion_probe.geometry: per-axis arguments, boxes and window lattices at any rank."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError
from occlusion_probe.geometry import (
    bounding_box,
    gaussian_bump,
    per_axis,
    spatial_shape,
    window_grid,
)


def test_per_axis_and_spatial_shape() -> None:
    assert per_axis("window", 3, 1) == (3,)
    assert per_axis("window", [2, 3, 4], 3) == (2, 3, 4)
    with pytest.raises(InputValueError, match=r"window: expected an int or 3 ints"):
        per_axis("window", (2, 3), 3)
    with pytest.raises(InputValueError, match=r"window\[1\]: expected a positive int, got 0"):
        per_axis("window", (2, 0), 2)
    with pytest.raises(InputTypeError, match=r"window: expected a positive int, got bool"):
        per_axis("window", True, 2)
    assert spatial_shape("shape", torch.Size([4, 5])) == (4, 5)
    with pytest.raises(InputTypeError, match=r"shape: expected a tuple of 1 to 3 positive ints"):
        spatial_shape("shape", 12)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from([(7,), (4, 5), (3, 4, 3)]).flatmap(
    lambda shape: st.lists(st.booleans(), min_size=2 * len(shape), max_size=2 * len(shape)).map(
        lambda bits: (shape, bits)
    )
))  # fmt: skip
def test_bounding_box_is_the_extent_of_true_positions(
    case: tuple[tuple[int, ...], list[bool]],
) -> None:
    shape, _ = case
    mask = torch.zeros(shape, dtype=torch.bool)
    generator = torch.Generator().manual_seed(sum(shape))
    mask[tuple(torch.randint(0, s, (3,), generator=generator) for s in shape)] = True
    points = [p for p in itertools.product(*map(range, shape)) if mask[p]]
    box = bounding_box(mask)
    assert box == tuple(
        (min(p[a] for p in points), max(p[a] for p in points) + 1) for a in range(len(shape))
    )


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(12,), (8, 9), (6, 7, 5)]),
    window=st.integers(1, 4),
    stride=st.integers(1, 4),
    change=st.sampled_from(["none", "hole", "extra", "swap", "drop"]),
)
def test_window_grid_is_found_exactly_for_sliding_windows(
    shape: tuple[int, ...], window: int, stride: int, change: str
) -> None:
    stride = min(stride, window)
    masks = op.sliding_windows(shape, window, stride).masks.clone()
    if change == "hole" and window > 1:
        masks[(0, *([0] * len(shape)))] = False  # a window with a missing corner
    elif change == "extra":
        masks[(0, *[s - 1 for s in shape])] = True  # a pixel outside the first window
    elif change == "swap" and masks.shape[0] > 1:
        masks = masks[[1, 0, *range(2, masks.shape[0])]]  # not row-major
    elif change == "drop" and masks.shape[0] > 2:
        masks = masks[:-1]  # an incomplete lattice
    found = window_grid(masks)
    if found is not None:  # never a lattice that is not exactly these masks
        rebuilt = torch.zeros((0, *shape), dtype=torch.bool)
        for corner in itertools.product(*found.starts):
            mask = torch.zeros(shape, dtype=torch.bool)
            mask[tuple(slice(c, c + w) for c, w in zip(corner, found.window, strict=True))] = True
            rebuilt = torch.cat([rebuilt, mask[None]])
        assert torch.equal(rebuilt, masks)
    if torch.equal(masks, op.sliding_windows(shape, window, stride).masks):
        assert found is not None  # and always found for sliding windows


def test_gaussian_bump_is_one_at_the_centre_at_every_rank() -> None:
    for size in ((5,), (4, 6), (3, 5, 7)):
        bump = gaussian_bump(size, 0.25)
        centre = tuple(s // 2 for s in size)
        assert bump.shape == size and float(bump[centre]) == 1.0 and float(bump.min()) == 0.0
