"""Dense engine: build each occluded image and run the full model on it (works for any model).

Occluded images are made in blocks of (images x regions x fills) on the model's device, with
no Python loop per image and no host-device synchronisation inside the loop; the model is
then run once per block, and every class output is kept. A block is one broadcast
``torch.where`` of masks, fills and images, except on CPU, where that kernel is not
vectorised (about 11 GiB/s on 2 cores against 60 for a cached copy) and two faster ways
give the same bits:

- the *bit select*, for fills shared by all images (numbers, or tensors broadcast to every
  image): the block's bits are ``fill_bits + image_bits * keep`` in the integer type of the
  float's width, one vectorised ``addcmul`` (about 31 GiB/s), where ``fill_bits`` holds the
  fill inside the region and 0 (the bits of +0.0) outside, and ``keep`` is 0 inside the
  region and 1 outside, both made once per (regions, fills) slice and reused for every
  image. Integer arithmetic makes it exact for every value, -0.0 and NaN payloads included.
- the *box path*, for large images whose fill-bit tables would be too big to keep: a
  broadcast copy of the images, then a write of the fill into each region's bounding box
  (a plain copy when the box is all region, as for grid cells).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from occlusion_probe.engines.boxes import bounding_boxes

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
# The bit select keeps one fill-bit table per (regions, fills) slice of the plan: up to
# R x V x C x H x W values in all. Above this many bytes the box path or the where is used.
_BITS_MAX_TABLE_BYTES = 64 * 2**20
# Integer types of the same width, for the bit select.
_BITS_TYPES = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


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

    masks : Tensor, shape (R, H, W), bool. Copied to the host once if it is not there.
    """
    host = masks.cpu()
    return [
        None if box is None else (*box, bool(host[j, box[0] : box[1], box[2] : box[3]].all()))
        for j, box in enumerate(bounding_boxes(host))
    ]


def occluded_blocks(
    images: Tensor,
    fill_images: Tensor,
    masks: Tensor,
    batch_size: int,
    *,
    reuse_buffers: bool = False,
) -> Iterator[tuple[Block, Tensor]]:
    """Yield ``(block, batch)`` with ``batch`` of shape (b, C, H, W): the occluded images of
    the block in (image, region, fill) order; each equals
    ``torch.where(masks[r], fill_images[v, i], images[i])`` exactly (dtype promoted alike).

    images : Tensor, shape (n, C, H, W)
    fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
    masks : Tensor, shape (R, H, W), bool
    reuse_buffers : when True, a later block of the same shape is written into the memory of
        an earlier batch (about a third faster for large images on CPU, where allocating
        fresh pages costs as much as filling them); use each batch before asking for the
        next one. When False, every batch is a new tensor.
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
    bits = None if boxes is not None else _bit_select_type(images, fill_images, masks)
    tables: dict[tuple[int, int, int, int], tuple[Tensor, Tensor]] = {}
    buffers: dict[tuple[int, int, int], Tensor] = {}

    def output(k: int, nr: int, nv: int) -> Tensor:
        """The memory for a (k, nr, nv, C, H, W) block: fresh, or the last one of that shape."""
        if reuse_buffers and (k, nr, nv) in buffers:
            return buffers[k, nr, nv]
        memory = torch.empty((k, nr, nv, c, h, w), dtype=dtype, device=images.device)
        if reuse_buffers:
            buffers[k, nr, nv] = memory
        return memory

    # Fills with full spatial dims, so that a box can be sliced out of any of them.
    fills_full = fills_by_image.expand(*fills_by_image.shape[:-2], h, w)
    for block in plan_blocks(n, r, v, batch_size):
        rows, regions, fills = block
        fill_rows = rows if per_image_fill else slice(None)
        k, nr, nv = rows.stop - rows.start, regions.stop - regions.start, fills.stop - fills.start
        batch = output(k, nr, nv)
        if bits is not None:
            key = (regions.start, regions.stop, fills.start, fills.stop)
            if key not in tables:
                region_masks = masks_view[:, regions]  # (1, nr, 1, 1, H, W)
                fill_bits = torch.where(region_masks, fills_by_image[:, :, fills], 0.0)
                keep = (~region_masks).to(bits)
                tables[key] = (fill_bits.contiguous().view(bits), keep)
            fill_bits, keep = tables[key]
            torch.addcmul(fill_bits, images_view[rows].view(bits), keep, out=batch.view(bits))
            yield block, batch.reshape(-1, c, h, w)
            continue
        if boxes is None:
            condition = masks_view[:, regions]
            fill_block, image_block = fills_by_image[fill_rows, :, fills], images_view[rows]
            torch.where(condition, fill_block, image_block, out=batch)
            yield block, batch.reshape(-1, c, h, w)
            continue
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


def _bit_select_type(images: Tensor, fill_images: Tensor, masks: Tensor) -> torch.dtype | None:
    """The integer type for the bit select when it applies (CPU, fills shared by all images,
    one float type, tables within budget), else None."""
    h, w = images.shape[-2:]
    if (
        images.device.type != "cpu"
        or fill_images.shape[1] != 1
        or fill_images.dtype != images.dtype
        or images.dtype not in _BITS_TYPES
    ):
        return None
    table_bytes = masks.shape[0] * fill_images.shape[0] * fill_images.shape[2] * h * w
    if table_bytes * images.element_size() > _BITS_MAX_TABLE_BYTES:
        return None
    return _BITS_TYPES[images.dtype]


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
    blocks = occluded_blocks(images, fill_images, masks, batch_size, reuse_buffers=True)
    for (rows, regions, fills), batch in blocks:
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
