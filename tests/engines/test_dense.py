"""The dense engine's pieces against plain reference loops.

`occluded_blocks` has two ways to build a block (one broadcast ``torch.where``, or a copy of
the images plus a write per region's bounding box); which one runs depends on the sizes, so
each test forces both and compares them with ``torch.where`` per occluded image.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_models import small_cnn
from torch import Tensor, nn

import occlusion_probe as op
from occlusion_probe.engines import dense
from occlusion_probe.engines.dense import occluded_blocks, plan_blocks, region_boxes, run_dense


def _reference_occluded(images: Tensor, fill_images: Tensor, masks: Tensor) -> Tensor:
    """(n, R, V, C, H, W): one torch.where per occluded image, in plain loops."""
    n, r, v = images.shape[0], masks.shape[0], fill_images.shape[0]
    if n == 0:
        dtype = torch.promote_types(images.dtype, fill_images.dtype)
        return torch.empty((0, r, v, *images.shape[1:]), dtype=dtype)
    per_image_fill = fill_images.shape[1] != 1
    out = [
        [
            [
                torch.where(masks[j], fill_images[k, i if per_image_fill else 0], images[i]).expand(
                    images.shape[1:]
                )
                for k in range(v)
            ]
            for j in range(r)
        ]
        for i in range(n)
    ]
    return torch.stack([torch.stack([torch.stack(row) for row in per_image]) for per_image in out])


def _assembled(
    images: Tensor, fill_images: Tensor, masks: Tensor, batch_size: int, reuse: bool = False
) -> tuple[Tensor, int]:
    """All blocks put back into (n, R, V, C, H, W), and the largest block's size."""
    n, c, h, w = images.shape
    r, v = masks.shape[0], fill_images.shape[0]
    dtype = torch.promote_types(images.dtype, fill_images.dtype)
    out = torch.full((n, r, v, c, h, w), float("nan"), dtype=dtype)
    largest = 0
    blocks = occluded_blocks(images, fill_images, masks, batch_size, reuse_buffers=reuse)
    for (rows, regions, fills), batch in blocks:
        shape = (rows.stop - rows.start, regions.stop - regions.start, fills.stop - fills.start)
        out[rows, regions, fills] = batch.reshape(*shape, c, h, w)
        largest = max(largest, batch.shape[0])
    return out, largest


@pytest.fixture(params=["where", "bits", "boxes"])
def block_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per way of building a block: broadcast where, bit select (shared
    fills only; others fall back to where) and boxes."""
    if request.param == "boxes":
        monkeypatch.setattr(dense, "_BOX_MIN_VALUES", 0)
        monkeypatch.setattr(dense, "_BOX_MAX_PARTIAL_AREA", float("inf"))
    else:
        monkeypatch.setattr(dense, "_BOX_MIN_VALUES", 2**62)
    budget = 2**62 if request.param == "bits" else -1
    monkeypatch.setattr(dense, "_BITS_MAX_TABLE_BYTES", budget)
    return str(request.param)


# --- plan_blocks -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5),
    r=st.integers(1, 6),
    v=st.integers(1, 5),
    batch_size=st.integers(1, 40),
)
def test_plan_blocks_cover_every_item_once_in_order(
    n: int, r: int, v: int, batch_size: int
) -> None:
    seen: list[tuple[int, int, int]] = []
    for rows, regions, fills in plan_blocks(n, r, v, batch_size):
        size = (
            (rows.stop - rows.start) * (regions.stop - regions.start) * (fills.stop - fills.start)
        )
        assert 0 < size <= batch_size
        seen.extend(
            (i, j, k)
            for i in range(rows.start, rows.stop)
            for j in range(regions.start, regions.stop)
            for k in range(fills.start, fills.stop)
        )
    # Every block is a contiguous range of the flattened (n, r, v) order, in order.
    assert seen == [(i, j, k) for i in range(n) for j in range(r) for k in range(v)]
    # As few blocks as whole slabs allow, and the pieces of a split axis differ in size by at
    # most one (no small leftover block).
    blocks = list(plan_blocks(n, r, v, batch_size))
    if r * v <= batch_size:
        expected, pieces = -(-n // (batch_size // (r * v))), [b[0] for b in blocks]
    elif v <= batch_size:
        expected, pieces = n * -(-r // (batch_size // v)), [b[1] for b in blocks]
    else:
        expected, pieces = n * r * -(-v // batch_size), [b[2] for b in blocks]
    assert len(blocks) == expected
    lengths = [piece.stop - piece.start for piece in pieces]
    assert not lengths or max(lengths) - min(lengths) <= 1


def test_plan_blocks_splits_a_slab_evenly() -> None:
    # The paper's 16 areas x 6 fills at batch 64: two forwards of 48, not 60 + 36.
    assert list(plan_blocks(2, 16, 6, 64)) == [
        (slice(0, 1), slice(0, 8), slice(0, 6)),
        (slice(0, 1), slice(8, 16), slice(0, 6)),
        (slice(1, 2), slice(0, 8), slice(0, 6)),
        (slice(1, 2), slice(8, 16), slice(0, 6)),
    ]


def test_plan_blocks_prefers_whole_slabs_per_image() -> None:
    assert list(plan_blocks(5, 4, 3, 24)) == [
        (slice(0, 2), slice(0, 4), slice(0, 3)),
        (slice(2, 4), slice(0, 4), slice(0, 3)),
        (slice(4, 5), slice(0, 4), slice(0, 3)),
    ]


# --- region_boxes ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(9,), (5, 7), (3, 4, 5)]).flatmap(
        lambda shape: st.lists(
            st.lists(st.booleans(), min_size=math.prod(shape), max_size=math.prod(shape)).map(
                lambda bits: torch.tensor(bits).reshape(shape)
            ),
            min_size=1,
            max_size=4,
        )
    )
)
def test_region_boxes_match_a_pixel_loop(mask_list: list[Tensor]) -> None:
    masks = torch.stack(mask_list)
    for mask, box in zip(masks, region_boxes(masks), strict=True):
        points = [p for p in itertools.product(*map(range, mask.shape)) if mask[p]]
        if not points:
            assert box is None
            continue
        lows = [min(p[axis] for p in points) for axis in range(mask.dim())]
        highs = [max(p[axis] for p in points) + 1 for axis in range(mask.dim())]
        volume = math.prod(high - low for low, high in zip(lows, highs, strict=True))
        expected = tuple(slice(low, high) for low, high in zip(lows, highs, strict=True))
        assert box == (expected, len(points) == volume)


# --- occluded_blocks ---------------------------------------------------------------------


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("n", [0, 1, 2])
def test_occluded_blocks_equal_where_per_image(block_path: str, n: int, reuse: bool) -> None:
    generator = torch.Generator().manual_seed(n)
    images = torch.rand(n, 3, 12, 10, generator=generator)
    masks = op.grid(12, 10, 3, 2).masks  # full boxes
    fill_images = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1, 1)
    out, largest = _assembled(images, fill_images, masks, batch_size=7, reuse=reuse)
    assert largest <= 7
    torch.testing.assert_close(out, _reference_occluded(images, fill_images, masks), rtol=0, atol=0)


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_occluded_blocks_scattered_masks_and_per_image_fills(
    block_path: str, batch_size: int, reuse: bool
) -> None:
    generator = torch.Generator().manual_seed(batch_size)
    images = torch.rand(3, 2, 9, 11, generator=generator)
    masks = torch.rand(4, 9, 11, generator=generator) < 0.3  # not rectangles
    masks[2] = False  # an empty region leaves the image as it is
    # Per-image, per-channel fills with full spatial size (e.g. a blurred copy).
    fill_images = torch.rand(2, 3, 2, 9, 11, generator=generator)
    out, _ = _assembled(images, fill_images, masks, batch_size, reuse=reuse)
    expected = _reference_occluded(images, fill_images, masks)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 2], images[:, None].expand(3, 2, 2, 9, 11), rtol=0, atol=0)


def test_occluded_blocks_promote_dtype_like_where(block_path: str) -> None:
    images = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    fill_images = torch.tensor([0.25], dtype=torch.float64).reshape(1, 1, 1, 1, 1)
    masks = op.grid(6, 6, 3, 3).masks
    out, _ = _assembled(images, fill_images, masks, batch_size=3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _reference_occluded(images, fill_images, masks), rtol=0, atol=0)


def test_batches_are_new_tensors_unless_buffers_are_reused(block_path: str) -> None:
    images = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    masks, fill_images = op.grid(6, 6, 2, 2).masks, torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    kept = [batch for _, batch in occluded_blocks(images, fill_images, masks, batch_size=8)]
    expected = _reference_occluded(images, fill_images, masks).reshape(-1, 1, 6, 6)
    torch.testing.assert_close(torch.cat(kept), expected, rtol=0, atol=0)
    reused = occluded_blocks(images, fill_images, masks, batch_size=8, reuse_buffers=True)
    pointers = {batch.data_ptr() for _, batch in reused}
    assert len(pointers) == 1  # three blocks of 8, one memory


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_bit_select_is_bit_exact(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense, "_BOX_MIN_VALUES", 2**62)
    images = torch.randn(3, 2, 5, 6, generator=torch.Generator().manual_seed(7)).to(dtype)
    images[0, 0, 0, :3] = torch.tensor([-0.0, 0.0, -0.0], dtype=dtype)  # signed zeros
    fills = torch.tensor([-0.0, 0.0, 1e-30, -2.5]).to(dtype)
    fill_images = fills.reshape(4, 1, 1, 1, 1)
    masks = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(8)) < 0.5
    masks[:, 0, 0] = True  # the signed zero of image 0 gets each fill, and is kept elsewhere
    masks[1, 0, 1] = False
    assert dense._bit_select_type(images, fill_images, masks) is not None
    out, _ = _assembled(images, fill_images, masks, batch_size=5)
    expected = _reference_occluded(images, fill_images, masks)
    bits = dense._BITS_TYPES[dtype]
    assert torch.equal(out.view(bits), expected.view(bits))


def test_bit_select_applies_only_to_shared_fills_of_the_images_type() -> None:
    images, masks = torch.zeros(2, 1, 4, 4), op.grid(4, 4, 2, 2).masks
    shared = torch.zeros(3, 1, 1, 1, 1)
    assert dense._bit_select_type(images, shared, masks) is torch.int32
    assert dense._bit_select_type(images, torch.zeros(3, 2, 1, 4, 4), masks) is None
    assert dense._bit_select_type(images, shared.double(), masks) is None
    assert dense._bit_select_type(images.int(), shared.int(), masks) is None
    big = torch.zeros(1, 3, 512, 512)
    assert dense._bit_select_type(big, shared, op.grid(512, 512, 16, 16).masks) is None


def test_box_path_is_chosen_only_where_it_pays() -> None:
    # Large CPU images with grid cells: boxes. Small images or scattered masks: one where.
    large = torch.zeros(2, 3, 224, 224)
    cells = op.grid(224, 224, 14, 14).masks
    assert dense._boxes_worth_it(large, cells, 6, batch_size=4) is not None
    small = torch.zeros(2, 1, 48, 48)
    assert dense._boxes_worth_it(small, op.grid(48, 48, 4, 4).masks, 6, batch_size=64) is None
    scattered = torch.rand(4, 224, 224, generator=torch.Generator().manual_seed(0)) < 0.5
    assert dense._boxes_worth_it(large, scattered, 6, batch_size=4) is None


# --- run_dense ---------------------------------------------------------------------------


def _four_regions_two_fills(n: int, seed: int) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """(model, images (n, 1, 12, 12), masks of a 2x2 grid, fills 0 and 1) for run_dense."""
    images = torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    fill_images = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1)
    return small_cnn().eval(), images, op.grid(12, 12, 2, 2).masks, fill_images


@pytest.mark.parametrize("n", [0, 1, 2])
def test_run_dense_equals_one_forward_per_occluded_image(block_path: str, n: int) -> None:
    model, images, masks, fill_images = _four_regions_two_fills(n, 10 + n)
    progress: list[int] = []
    with torch.inference_mode():
        clean, out = run_dense(model, images, fill_images, masks, 3, 5, progress.append)
        occluded = _reference_occluded(images, fill_images, masks)
        rows = [model(image[None])[0] for image in occluded.reshape(-1, 1, 12, 12)]
        expected = torch.stack(rows).reshape(n, 4, 2, 5) if rows else torch.empty(0, 4, 2, 5)
    assert clean is None
    assert out.shape == (n, 4, 2, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert sum(progress) == n * 4 * 2 and max(progress, default=0) <= 3


@pytest.mark.parametrize(("n", "m"), [(0, 0), (1, 1), (2, 1), (3, 3), (2, 0)])
def test_run_dense_runs_unoccluded_images_in_its_blocks(n: int, m: int) -> None:
    # 7 images per call over n x 4 regions x 2 fills + m unoccluded ones: those share blocks
    # with occluded ones (n = 1: one block of 9 -> 5 + 4), and progress counts only the
    # occluded images.
    model, images, masks, fill_images = _four_regions_two_fills(n, 20 + n)
    progress: list[int] = []
    calls: list[int] = []

    def counted(batch: Tensor) -> Tensor:
        calls.append(batch.shape[0])
        return model(batch)

    unoccluded = images[n - m :]
    with torch.inference_mode():
        clean, out = run_dense(
            counted, images, fill_images, masks, 7, 5, progress.append, unoccluded=unoccluded
        )
        _none, alone = run_dense(model, images, fill_images, masks, 7, 5)
        expected_clean = model(unoccluded) if m else torch.empty(0, 5)
    assert clean is not None and clean.shape == (m, 5)
    torch.testing.assert_close(clean, expected_clean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-6)
    assert sum(calls) == n * 8 + m and max(calls, default=0) <= 7
    assert sum(progress) == n * 8
