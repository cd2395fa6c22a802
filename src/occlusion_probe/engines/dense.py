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

from occlusion_probe.batching import BatchPlan, clock
from occlusion_probe.geometry import axis_extents

__all__ = [
    "BlockBuilder",
    "flat_blocks",
    "occluded_blocks",
    "plan_blocks",
    "region_boxes",
    "run_dense",
    "run_items",
]

Block = tuple[slice, slice, slice]
# A region's bounding box, one slice per spatial axis, and whether the box is all region.
RegionBox = tuple[tuple[slice, ...], bool]

# On CPU, per region and block the box path costs a few small tensor ops (~10 us of Python
# and dispatch); with fewer occluded values per region than this, one broadcast where is as
# fast (benchmarks/test_masks.py: boxes pay on 3x224x224 images, not on 1x48x48). On CUDA the
# where is a single memory-bound kernel and per-region launches would only add time.
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


def region_boxes(masks: Tensor) -> list[RegionBox | None]:
    """Per region, its bounding box (a slice per spatial axis) and whether every pixel of the
    box belongs to the region; None for an empty mask.

    masks : Tensor, shape (R, *spatial), bool. Copied to the host once if it is not there.
    """
    host = masks.cpu()
    extents = axis_extents(host)
    sizes = [extent.shape[1] for extent in extents]
    starts = [extent.argmax(dim=1).tolist() for extent in extents]
    # argmax returns the first maximum: from the flipped end, the last True
    stops = [
        (size - extent.flip(1).argmax(dim=1)).tolist()
        for extent, size in zip(extents, sizes, strict=True)
    ]
    nonempty = extents[0].amax(dim=1).tolist()
    boxes: list[RegionBox | None] = []
    for j, keep in enumerate(nonempty):
        if not keep:
            boxes.append(None)
            continue
        box = tuple(slice(a[j], b[j]) for a, b in zip(starts, stops, strict=True))
        boxes.append((box, bool(host[j][box].all())))
    return boxes


def _volume(box: tuple[slice, ...]) -> int:
    volume = 1
    for axis in box:
        volume *= axis.stop - axis.start
    return volume


class BlockBuilder:
    """Builds the occluded images of any block (rows, regions, fills) into given memory.

    Entry (i, r, v) of a block equals ``torch.where(masks[r], fill_images[v, i], images[i])``
    exactly (dtype promoted alike), whichever way it is built (bit select, boxes or where;
    see the module docstring).

    images : Tensor, shape (n, C, *spatial)
    fill_images : Tensor, shape (V, n or 1, C or 1, *spatial or 1s)
    masks : Tensor, shape (R, *spatial), bool
    batch_size : about how many images a block holds (decides between the ways)
    """

    def __init__(self, images: Tensor, fill_images: Tensor, masks: Tensor, batch_size: int) -> None:
        n, spatial = images.shape[0], tuple(images.shape[2:])
        self.images, self.masks = images, masks
        self.shape = (n, masks.shape[0], fill_images.shape[0])
        self.dtype = torch.promote_types(images.dtype, fill_images.dtype)
        # (n, R, V, C, *spatial) views: everything broadcasts, only the output block is written.
        self.fills_by_image = fill_images.transpose(0, 1).unsqueeze(1)
        self.masks_view = masks[None, :, None, None]
        self.images_view = images[:, None, None]
        self.per_image_fill = fill_images.shape[1] != 1
        self.boxes = _boxes_worth_it(images, masks, fill_images.shape[0], batch_size)
        self.bits = None if self.boxes is not None else _bit_select_type(images, fill_images, masks)
        # Fills with full spatial dims, so that a box can be sliced out of any of them.
        rank = len(spatial)
        self.fills_full = self.fills_by_image.expand(
            *self.fills_by_image.shape[: self.fills_by_image.dim() - rank], *spatial
        )
        self._tables: tuple[Tensor, Tensor] | None = None

    def _bit_tables(self) -> tuple[Tensor, Tensor]:
        """(fill bits (1, R, V, C, *spatial), keep (1, R, 1, 1, *spatial)), made once; blocks read
        slices of them."""
        if self._tables is None:
            if self.bits is None:
                raise RuntimeError("the bit select does not apply to these fills")
            fill_bits = torch.where(self.masks_view, self.fills_by_image, 0.0)
            keep = (~self.masks_view).to(self.bits)
            self._tables = (fill_bits.contiguous().view(self.bits), keep)
        return self._tables

    def write(self, block: Block, out: Tensor) -> None:
        """Write `block`'s occluded images into `out`, shape (k, nr, nv, C, *spatial)."""
        rows, regions, fills = block
        fill_rows = rows if self.per_image_fill else slice(None)
        if self.bits is not None:
            fill_bits, keep = self._bit_tables()
            image_bits = self.images_view[rows].view(self.bits)
            target = out.view(self.bits)
            torch.addcmul(fill_bits[:, regions, fills], image_bits, keep[:, regions], out=target)
            return
        if self.boxes is None:
            condition = self.masks_view[:, regions]
            fill_block = self.fills_by_image[fill_rows, :, fills]
            torch.where(condition, fill_block, self.images_view[rows], out=out)
            return
        out.copy_(self.images_view[rows].expand(out.shape))
        fill_block = self.fills_full[fill_rows, :, fills]  # (k or 1, 1, nv, C or 1, *spatial)
        for j, found in enumerate(self.boxes[regions]):
            if found is None:
                continue
            box, full = found
            lead: tuple[slice, ...] = (slice(None), slice(j, j + 1), slice(None), slice(None))
            target = out[lead + box]
            fill_box = fill_block[(slice(None),) * (fill_block.dim() - len(box)) + box]
            if full:
                target.copy_(fill_box)
            else:
                region = self.masks[regions.start + j][box]
                target.copy_(torch.where(region, fill_box, target))

    def write_range(self, start: int, stop: int, out: Tensor) -> None:
        """Write flat items [start, stop) of the (n, R, V) order into `out` (stop - start,
        C, *spatial), as at most five rectangular blocks."""
        offset = 0
        _n, r, v = self.shape
        for block in flat_blocks(start, stop, r, v):
            rows, regions, fills = block
            k, nr, nv = (
                rows.stop - rows.start,
                regions.stop - regions.start,
                fills.stop - fills.start,
            )
            count = k * nr * nv
            self.write(block, out[offset : offset + count].view(k, nr, nv, *out.shape[1:]))
            offset += count


def flat_blocks(start: int, stop: int, r: int, v: int) -> list[Block]:
    """Items [start, stop) of the flattened (n, R, V) order as rectangular blocks, in order:
    part of a region's fills, whole regions of one image, whole images, and so on."""
    blocks: list[Block] = []
    slab = r * v
    position = start
    while position < stop:
        image, within = divmod(position, slab)
        region, fill = divmod(within, v)
        left = stop - position
        if fill != 0 or left < v:
            end = min(v, fill + left)
            blocks.append((slice(image, image + 1), slice(region, region + 1), slice(fill, end)))
            position += end - fill
        elif region != 0 or left < slab:
            count = min(r - region, left // v)
            blocks.append((slice(image, image + 1), slice(region, region + count), slice(0, v)))
            position += count * v
        else:
            count = left // slab
            blocks.append((slice(image, image + count), slice(0, r), slice(0, v)))
            position += count * slab
    return blocks


def occluded_blocks(
    images: Tensor,
    fill_images: Tensor,
    masks: Tensor,
    batch_size: int,
    *,
    reuse_buffers: bool = False,
) -> Iterator[tuple[Block, Tensor]]:
    """Yield ``(block, batch)`` with ``batch`` of shape (b, C, *spatial): the occluded images of
    the block in (image, region, fill) order; each equals
    ``torch.where(masks[r], fill_images[v, i], images[i])`` exactly (dtype promoted alike).

    images : Tensor, shape (n, C, *spatial)
    fill_images : Tensor, shape (V, n or 1, C or 1, *spatial or 1s)
    masks : Tensor, shape (R, *spatial), bool
    reuse_buffers : when True, a later block of the same shape is written into the memory of
        an earlier batch (about a third faster for large images on CPU, where allocating
        fresh pages costs as much as filling them); use each batch before asking for the
        next one. When False, every batch is a new tensor.
    """
    n, item = images.shape[0], tuple(images.shape[1:])
    r, v = masks.shape[0], fill_images.shape[0]
    builder = BlockBuilder(images, fill_images, masks, batch_size)
    buffers: dict[tuple[int, int, int], Tensor] = {}
    for block in plan_blocks(n, r, v, batch_size):
        rows, regions, fills = block
        shape = (rows.stop - rows.start, regions.stop - regions.start, fills.stop - fills.start)
        batch = buffers.get(shape) if reuse_buffers else None
        if batch is None:
            batch = torch.empty((*shape, *item), dtype=builder.dtype, device=images.device)
            if reuse_buffers:
                buffers[shape] = batch
        builder.write(block, batch)
        yield block, batch.reshape(-1, *item)


def _bit_select_type(images: Tensor, fill_images: Tensor, masks: Tensor) -> torch.dtype | None:
    """The integer type for the bit select when it applies (CPU, fills shared by all images,
    one float type, tables within budget), else None."""
    pixels = masks[0].numel()
    if (
        images.device.type != "cpu"
        or fill_images.shape[1] != 1
        or fill_images.dtype != images.dtype
        or images.dtype not in _BITS_TYPES
    ):
        return None
    table_bytes = masks.shape[0] * fill_images.shape[0] * fill_images.shape[2] * pixels
    if table_bytes * images.element_size() > _BITS_MAX_TABLE_BYTES:
        return None
    return _BITS_TYPES[images.dtype]


def _boxes_worth_it(
    images: Tensor, masks: Tensor, v: int, batch_size: int
) -> list[RegionBox | None] | None:
    """The regions' boxes when building blocks box by box beats one where, else None."""
    n, c, pixels = images.shape[0], images.shape[1], masks[0].numel()
    r = masks.shape[0]
    if images.device.type != "cpu" or n == 0 or r == 0 or v == 0:
        return None
    rows, _regions, fills = next(plan_blocks(n, r, v, batch_size))
    per_region = (rows.stop - rows.start) * (fills.stop - fills.start) * c * pixels
    if per_region < _BOX_MIN_VALUES:
        return None
    boxes = region_boxes(masks)
    partial = sum(_volume(b[0]) for b in boxes if b is not None and not b[1])
    return boxes if partial <= _BOX_MAX_PARTIAL_AREA * r * pixels else None


def run_dense(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    fill_images: Tensor,
    masks: Tensor,
    batches: BatchPlan | int,
    num_classes: int,
    on_progress: Callable[[int], None] | None = None,
    *,
    unoccluded: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Outputs of `forward` on every occluded image (and on `unoccluded` images).

    forward : callable, (b, C, *spatial) -> (b, K)
    images : Tensor, shape (n, C, *spatial)
    fill_images : Tensor, shape (V, n or 1, C or 1, *spatial or 1s)
    masks : Tensor, shape (R, *spatial), bool
    batches : the sizes (and memory formats) of the model calls: a `BatchPlan` (which may
        time its candidates on these blocks), or a fixed number of images per call
    on_progress : called with the number of occluded images done, as blocks finish
    unoccluded : Tensor, shape (m, C, *spatial), optional: images to run as m more items after
        the occluded ones, in the same blocks (the sweep's unoccluded images: a call of
        their own would cost a whole small forward, 1-2 % of a sweep of one image over 49
        regions x 2 fills on a 2-core CPU)
    returns : (outputs on `unoccluded`, Tensor, shape (m, K), row i equal to
        ``forward(unoccluded[i][None])[0]`` up to the model's batch dependence, or None
        without them; occluded outputs, Tensor, shape (n, R, V, K), on the images' device,
        entry (i, r, v) equal to
        ``forward(torch.where(masks[r], fill_images[v, i], images[i])[None])[0]``)
    """
    n = images.shape[0]
    r, v = masks.shape[0], fill_images.shape[0]
    plan = BatchPlan.fixed(batches) if isinstance(batches, int) else batches
    builder = BlockBuilder(images, fill_images, masks, plan.current.size)
    occluded_items = n * r * v

    def write_range(start: int, stop: int, out: Tensor) -> None:
        middle = min(max(start, occluded_items), stop)
        if middle > start:
            builder.write_range(start, middle, out[: middle - start])
        if stop > middle and unoccluded is not None:
            out[middle - start :] = unoccluded[middle - occluded_items : stop - occluded_items]

    done = 0

    def progress(count: int) -> None:
        nonlocal done
        step = min(done + count, occluded_items) - min(done, occluded_items)
        done += count
        if on_progress is not None and step > 0:
            on_progress(step)

    out = run_items(
        forward,
        write_range,
        occluded_items + (0 if unoccluded is None else unoccluded.shape[0]),
        tuple(images.shape[1:]),
        builder.dtype,
        images.device,
        plan,
        num_classes,
        progress,
    )
    occluded = out[:occluded_items].reshape(n, r, v, out.shape[1])
    return (None if unoccluded is None else out[occluded_items:]), occluded


def run_items(
    forward: Callable[[Tensor], Tensor],
    write_range: Callable[[int, int, Tensor], None],
    total: int,
    image_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    plan: BatchPlan,
    num_classes: int,
    on_progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Outputs of `forward` on `total` images that `write_range` builds, in the plan's blocks.

    The loop every dense evaluation shares: for each block of the plan, the items are
    written into a reused buffer, the model runs once on them (a model that refuses
    channels-last input gets the same block contiguous, and so does the rest), and the
    block's time goes back to the plan.

    forward : callable, (b, C, *spatial) -> (b, K)
    write_range : callable ``(start, stop, out)`` that writes items [start, stop) into
        `out`, shape (stop - start, C, *spatial)
    total : how many items there are
    image_shape : (C, *spatial) of one item
    dtype, device : of the items' buffers
    plan : the sizes (and memory formats) of the model calls
    num_classes : K, for the shape of an empty result
    returns : Tensor, shape (total, K), on `forward`'s output device; row j is
        ``forward(item j [None])[0]`` up to the model's batch dependence.
    """
    out: Tensor | None = None
    buffers: dict[int, Tensor] = {}  # a block's memory is reused by the next of its size
    start = 0
    for config in plan.blocks(total):
        began = clock(device)
        stop = start + config.size
        batch = buffers.get(config.size)
        if batch is None:
            batch = torch.empty((config.size, *image_shape), dtype=dtype, device=device)
            buffers[config.size] = batch
        write_range(start, stop, batch)
        try:
            outputs = forward(config.prepare(batch))
        except RuntimeError:
            # A model may refuse channels-last input (x.view(n, -1) on it fails); the same
            # block then runs contiguous, and so does the rest of the sweep.
            if not config.channels_last:
                raise
            plan.refuse_channels_last()
            outputs = forward(batch)
        if out is None:
            out = torch.empty((total, outputs.shape[1]), dtype=outputs.dtype, device=outputs.device)
        out[start:stop] = outputs
        plan.record(config, clock(device) - began)
        start = stop
        if on_progress is not None:
            on_progress(config.size)
    if out is None:
        return torch.empty((0, num_classes), dtype=dtype, device=device)
    return out
