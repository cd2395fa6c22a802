"""Dense engine: build each occluded image and run the full model on it (works for any model).

Occluded images are made in blocks of (images x regions x fills) on the model's device, with
no Python loop per image and no host-device synchronisation inside the loop; the model is
then run once per block, and every class output is kept. A block is one broadcast
``torch.where`` of masks, fills and images. On CPU, when each region of a block holds many
values (large images), it is instead one broadcast copy of the images followed, per region,
by a write of the fill into the region's bounding box (a plain copy when the box is all
region, as for grid cells), since the CPU where kernel costs 2-3x a copy per value. Both
give the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["occluded_blocks", "plan_blocks", "region_boxes", "run_dense"]

Block = tuple[slice, slice, slice]

# On CPU, per region and block the box path costs a few small tensor ops (~10 us of Python
# and dispatch); with fewer occluded values per region than this, one broadcast where is as
# fast (measured on 2 CPU cores with benchmarks/test_masks.py: 1x48x48 images, 5 per block,
# were no faster by boxes; 3x224x224 ones were 20-25 % faster). On CUDA the where is a single
# memory-bound kernel and the per-region launches would only add time, so it is always used.
_BOX_MIN_VALUES = 2**18
# The where kernel costs about 2-3x a copy per value, so the box path wins while the boxes
# that are not all region (scattered masks) cover at most about half of all regions' pixels.
_BOX_MAX_PARTIAL_AREA = 0.5


def plan_blocks(n: int, r: int, v: int, batch_size: int) -> Iterator[Block]:
    """Split the (n, r, v) index space into rectangular blocks of at most `batch_size` items.

    Whole (regions x fills) slabs per image are preferred, so that a block is a contiguous
    range of the flattened (n, r, v) order and its outputs are one contiguous slice. Where a
    slab must be split, its pieces are of near-equal size (16 regions x 6 fills at batch 64:
    8 + 8 regions, not 10 + 6), since a small leftover forward costs nearly as much as a full
    one on a CPU.
    """
    if r * v <= batch_size:
        for rows in _even_slices(n, batch_size // (r * v)):
            yield rows, slice(0, r), slice(0, v)
    elif v <= batch_size:
        region_slices = list(_even_slices(r, batch_size // v))
        for i in range(n):
            for regions in region_slices:
                yield slice(i, i + 1), regions, slice(0, v)
    else:
        fill_slices = list(_even_slices(v, batch_size))
        for i in range(n):
            for j in range(r):
                for fills in fill_slices:
                    yield slice(i, i + 1), slice(j, j + 1), fills


def _even_slices(total: int, most: int) -> Iterator[slice]:
    """Consecutive slices covering range(total), as few as allowed by `most` items each,
    with sizes differing by at most one (larger ones first)."""
    if total <= 0:
        return
    count = -(-total // most)
    size, extra = divmod(total, count)
    start = 0
    for index in range(count):
        stop = start + size + (1 if index < extra else 0)
        yield slice(start, stop)
        start = stop


def region_boxes(masks: Tensor) -> list[tuple[int, int, int, int, bool] | None]:
    """Per region, ``(top, bottom, left, right, full)`` of its bounding box, where `full`
    means every pixel of the box belongs to the region; None for an empty mask.

    masks : Tensor, shape (R, H, W), bool. Reads R x (H + W + 1) numbers back to the host once.
    """
    rows = masks.any(dim=2).cpu()
    cols = masks.any(dim=1).cpu()
    areas = masks.sum(dim=(1, 2)).cpu().tolist()
    boxes: list[tuple[int, int, int, int, bool] | None] = []
    for row, col, area in zip(rows, cols, areas, strict=True):
        ys, xs = torch.nonzero(row).flatten().tolist(), torch.nonzero(col).flatten().tolist()
        if not ys:
            boxes.append(None)
            continue
        top, bottom, left, right = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        boxes.append((top, bottom, left, right, area == (bottom - top) * (right - left)))
    return boxes


def occluded_blocks(
    images: Tensor, fill_images: Tensor, masks: Tensor, batch_size: int
) -> Iterator[tuple[Block, Tensor]]:
    """Yield ``(block, batch)`` with ``batch`` of shape (b, C, H, W): the occluded images of
    the block in (image, region, fill) order; each equals
    ``torch.where(masks[r], fill_images[v, i], images[i])`` exactly (dtype promoted alike).

    images : Tensor, shape (n, C, H, W)
    fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
    masks : Tensor, shape (R, H, W), bool
    """
    n, c, h, w = images.shape
    r, v = masks.shape[0], fill_images.shape[0]
    dtype = torch.promote_types(images.dtype, fill_images.dtype)
    # (n, R, V, C, H, W) views: everything broadcasts, only the output block is written.
    fills_by_image = fill_images.transpose(0, 1).unsqueeze(1)
    masks_view = masks[None, :, None, None]
    images_view = images[:, None, None]
    per_image_fill = fill_images.shape[1] != 1
    boxes = _boxes_worth_it(images, masks, v, batch_size)
    # Fills with full spatial dims, so that a box can be sliced out of any of them.
    fills_full = fills_by_image.expand(*fills_by_image.shape[:-2], h, w)
    for block in plan_blocks(n, r, v, batch_size):
        rows, regions, fills = block
        fill_rows = rows if per_image_fill else slice(None)
        if boxes is None:
            batch = torch.where(
                masks_view[:, regions], fills_by_image[fill_rows, :, fills], images_view[rows]
            )
            yield block, batch.reshape(-1, c, h, w)
            continue
        k, nr, nv = rows.stop - rows.start, regions.stop - regions.start, fills.stop - fills.start
        batch = torch.empty((k, nr, nv, c, h, w), dtype=dtype, device=images.device)
        batch.copy_(images_view[rows].expand(k, nr, nv, c, h, w))
        fill_block = fills_full[fill_rows, :, fills]  # (k or 1, 1, nv, C or 1, H, W)
        for j, box in enumerate(boxes[regions]):
            if box is None:
                continue
            top, bottom, left, right, full = box
            target = batch[:, j : j + 1, :, :, top:bottom, left:right]
            fill_box = fill_block[..., top:bottom, left:right]
            if full:
                target.copy_(fill_box)
            else:
                region = masks[regions.start + j, top:bottom, left:right]
                target.copy_(torch.where(region, fill_box, target))
        yield block, batch.reshape(-1, c, h, w)


def _boxes_worth_it(
    images: Tensor, masks: Tensor, v: int, batch_size: int
) -> list[tuple[int, int, int, int, bool] | None] | None:
    """The regions' boxes when building blocks box by box beats one where, else None."""
    n, c, h, w = images.shape
    r = masks.shape[0]
    if images.device.type != "cpu" or n == 0 or r == 0 or v == 0:
        return None
    rows, _regions, fills = next(plan_blocks(n, r, v, batch_size))
    per_region = (rows.stop - rows.start) * (fills.stop - fills.start) * c * h * w
    if per_region < _BOX_MIN_VALUES:
        return None
    boxes = region_boxes(masks)
    partial = sum((b[1] - b[0]) * (b[3] - b[2]) for b in boxes if b is not None and not b[4])
    return boxes if partial <= _BOX_MAX_PARTIAL_AREA * r * h * w else None


def run_dense(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    fill_images: Tensor,
    masks: Tensor,
    batch_size: int,
    num_classes: int,
    on_progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Outputs of `forward` on every occluded image.

    forward : callable, (b, C, H, W) -> (b, K)
    images : Tensor, shape (n, C, H, W)
    fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
    masks : Tensor, shape (R, H, W), bool
    returns : Tensor, shape (n, R, V, K), on the images' device; entry (i, r, v) is
        ``forward(torch.where(masks[r], fill_images[v, i], images[i])[None])[0]``.
    """
    n = images.shape[0]
    r, v = masks.shape[0], fill_images.shape[0]
    out: Tensor | None = None
    for (rows, regions, fills), batch in occluded_blocks(images, fill_images, masks, batch_size):
        outputs = forward(batch)
        if out is None:
            out = torch.empty((n, r, v, num_classes), dtype=outputs.dtype, device=outputs.device)
        shape = (rows.stop - rows.start, regions.stop - regions.start, fills.stop - fills.start, -1)
        out[rows, regions, fills] = outputs.reshape(shape)
        if on_progress is not None:
            on_progress(batch.shape[0])
    if out is None:
        return torch.empty((n, r, v, num_classes), dtype=images.dtype, device=images.device)
    return out
