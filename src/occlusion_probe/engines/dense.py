"""Dense engine: build each occluded image and run the full model on it (works for any model).

Occluded images are made in blocks of (images x regions x fills) with a single broadcast
``torch.where`` on the model's device: no Python loop per image, no gathers, no host-device
synchronisation; the model is then run once per block, and every class output is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["occluded_blocks", "plan_blocks", "run_dense"]

Block = tuple[slice, slice, slice]


def plan_blocks(n: int, r: int, v: int, batch_size: int) -> Iterator[Block]:
    """Split the (n, r, v) index space into rectangular blocks of at most `batch_size` items.

    Whole (regions x fills) slabs per image are preferred, so that a block is a contiguous
    range of the flattened (n, r, v) order and its outputs are one contiguous slice.
    """
    if r * v <= batch_size:
        step = batch_size // (r * v)
        for i0 in range(0, n, step):
            yield slice(i0, min(i0 + step, n)), slice(0, r), slice(0, v)
    elif v <= batch_size:
        step = batch_size // v
        for i in range(n):
            for r0 in range(0, r, step):
                yield slice(i, i + 1), slice(r0, min(r0 + step, r)), slice(0, v)
    else:
        for i in range(n):
            for j in range(r):
                for v0 in range(0, v, batch_size):
                    yield slice(i, i + 1), slice(j, j + 1), slice(v0, min(v0 + batch_size, v))


def occluded_blocks(
    images: Tensor, fill_images: Tensor, masks: Tensor, batch_size: int
) -> Iterator[tuple[Block, Tensor]]:
    """Yield ``(block, batch)`` with ``batch`` of shape (b, C, H, W): the occluded images of
    the block in (image, region, fill) order.

    images : Tensor, shape (n, C, H, W)
    fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
    masks : Tensor, shape (R, H, W), bool
    """
    n, c, h, w = images.shape
    r, v = masks.shape[0], fill_images.shape[0]
    # (n, R, V, C, H, W) views: everything broadcasts, only the output block is written.
    fills_by_image = fill_images.transpose(0, 1).unsqueeze(1)
    masks_view = masks[None, :, None, None]
    images_view = images[:, None, None]
    per_image_fill = fill_images.shape[1] != 1
    for block in plan_blocks(n, r, v, batch_size):
        rows, regions, fills = block
        fill_block = fills_by_image[rows if per_image_fill else slice(None), :, fills]
        batch = torch.where(masks_view[:, regions], fill_block, images_view[rows])
        yield block, batch.reshape(-1, c, h, w)


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
