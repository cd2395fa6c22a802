"""Mask throughput: building occluded batches alone vs a plain copy of the same bytes.

``occlusion_probe.engines.dense.occluded_blocks`` makes each batch of occluded images (on
CPU by a bit select or by boxes, see its module). Its reference is ``dst.copy_(src)`` of a tensor the size of
each batch, for the same number and sizes of batches: memory traffic that any way of
producing the batches must at least pay. Target: at least half the copy's speed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from models import PAPER, PAPER_SMOKE, VGG, Case, workload_of

from occlusion_probe.engines.dense import occluded_blocks, plan_blocks
from occlusion_probe.fills import resolve_fills, stack_fills
from occlusion_probe.sweep import auto_batch_size

if TYPE_CHECKING:
    from conftest import Harness


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(PAPER, id="paper"),
        pytest.param(PAPER_SMOKE, id="paper-smoke"),
        pytest.param(VGG, id="vgg"),
    ],
)
def test_occluded_blocks(benchmark: object, harness: Harness, case: Case) -> None:
    """All occluded batches of the case's workload at the sweep's "auto" batch size."""
    workload = workload_of(case, harness.device)
    images, masks = workload.images, workload.regions.masks.to(harness.device)
    n, c, h, w = images.shape
    r, v = masks.shape[0], len(workload.fills)
    # Exactly what sweep() hands the dense engine.
    fill_images = stack_fills(resolve_fills(workload.fills, (c, h, w)), images)
    batch_size = auto_batch_size((c, h, w), harness.device, workload.count)
    sizes = [
        (rows.stop - rows.start) * (regions.stop - regions.start) * (fills.stop - fills.start)
        for rows, regions, fills in plan_blocks(n, r, v, batch_size)
    ]
    assert sum(sizes) == workload.count
    source = torch.rand((max(sizes), c, h, w), device=harness.device)
    target = torch.empty_like(source)

    def build() -> None:
        # As the dense engine calls it: each batch is used before the next is made.
        blocks = occluded_blocks(images, fill_images, masks, batch_size, reuse_buffers=True)
        for _block, _batch in blocks:
            pass

    def copy() -> None:
        for size in sizes:
            target[:size].copy_(source[:size])

    rounds = 1 if case.smoke else 5
    seconds, copy_seconds = harness.paired(benchmark, build, copy, rounds, warmup=build)
    megabytes = workload.count * c * h * w * images.element_size() / 2**20
    harness.record(
        benchmark,
        group=f"mask throughput: {workload.name}",
        key="masks",
        method=f"occluded_blocks, batch {batch_size} ({megabytes / seconds:.0f} MiB/s)",
        images=workload.count,
        seconds=seconds,
        ratio=copy_seconds / seconds,
        reference=f"dst.copy_(src), same batches ({megabytes / copy_seconds:.0f} MiB/s)",
        target=None if case.smoke else 0.5,
        batch_size=batch_size,
        mib_per_s=megabytes / seconds,
        copy_mib_per_s=megabytes / copy_seconds,
    )
    # The blocks are the occluded images in (image, region, fill) order.
    first = next(iter(occluded_blocks(images, fill_images, masks, batch_size)))[1]
    prefix = workload.occluded(first.shape[0])
    torch.testing.assert_close(first, prefix, rtol=0, atol=0)
