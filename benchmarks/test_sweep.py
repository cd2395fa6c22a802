"""Sweep benchmarks: dense and incremental engines, captum and a naive loop vs the forward limit.

The paper's analysis is N images x 16 areas x 6 fills x 7 classes. Each test times one method
on such a workload and reports its images/s as a ratio to the forward limit (plain forwards
of the same occluded images, prebuilt in memory, at the best batch size of a scan), timed in
the same test with interleaved rounds. Tests whose id contains ``smoke`` run tiny sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from captum.attr import FeatureAblation
from models import PAPER, PAPER_SMOKE, VGG, VGG_SMOKE, Case, workload_of
from torch import Tensor, nn

import occlusion_probe as op

if TYPE_CHECKING:
    from conftest import Harness

ALL_CASES = [
    pytest.param(PAPER, id="paper"),
    pytest.param(PAPER_SMOKE, id="paper-smoke"),
    pytest.param(VGG, id="vgg"),
    pytest.param(VGG_SMOKE, id="vgg-smoke"),
]
PAPER_CASES = [pytest.param(PAPER, id="paper"), pytest.param(PAPER_SMOKE, id="paper-smoke")]


@pytest.mark.parametrize("case", ALL_CASES)
def test_forward_limit(benchmark: object, harness: Harness, case: Case) -> None:
    """Plain forwards over *all* prebuilt occluded images at the scanned best batch size and
    memory format.

    Its ratio to the per-test reference (a prefix of the same images) should be about 1: it
    checks that the prefix the other tests pair with stands for the whole set.
    """
    workload = workload_of(case, harness.device)
    limit = harness.limit(case)
    harness.against_limit(
        benchmark,
        case,
        workload,
        harness.limit_forwards(case, workload)[0],
        key="forward",
        label=f"plain forwards of all {workload.count} prebuilt images, batch "
        f"{limit.batch_size}, {limit.memory_format}",
        rounds=case.rounds,
        scan={f"{name} {size}": rate for (name, size), rate in limit.scan.items()},
    )


@pytest.mark.parametrize("case", ALL_CASES)
def test_dense_sweep(benchmark: object, harness: Harness, case: Case) -> None:
    """The whole dense sweep (masks, forwards, collection); target: >= 0.9 of the limit."""
    workload = workload_of(case, harness.device)
    result = harness.sweep(benchmark, case, workload, "dense", "dense", 0.9)
    n, r, v = workload.images.shape[0], len(workload.regions), len(workload.fills)
    assert tuple(result.occluded.shape[:3]) == (n, r, v)


@pytest.mark.parametrize("case", ALL_CASES)
def test_dense_sweep_best_batch(benchmark: object, harness: Harness, case: Case) -> None:
    """The dense sweep at the forward limit's own batch size: what the engine adds (masks,
    the unoccluded forward, collection), apart from the choice of the "auto" batch size."""
    workload = workload_of(case, harness.device)
    best = harness.limit(case).batch_size
    harness.sweep(benchmark, case, workload, "dense", "dense-best", 0.9, best)


@pytest.mark.parametrize("case", ALL_CASES)
def test_incremental_sweep(benchmark: object, harness: Harness, case: Case) -> None:
    """The incremental engine on the case's own grid (16x16 patches on the VGG input).

    Target on the VGG input: >= 2x the forward limit (a larger input should gain more than
    the 48x48 CNN); the paper CNN's 4x4 grid has large areas and no target.
    """
    workload = workload_of(case, harness.device)
    target = case.incremental_target
    result = harness.sweep(benchmark, case, workload, "incremental", "incremental", target)
    if case.smoke:
        dense = workload.sweep("dense")
        torch.testing.assert_close(result.occluded, dense.occluded, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", PAPER_CASES)
def test_incremental_sweep_fine_grid(benchmark: object, harness: Harness, case: Case) -> None:
    """The incremental engine with small areas (12x12 grid of 4x4 pixels); target: >= 2x."""
    workload = workload_of(case, harness.device, n=case.fine_n, grid=case.fine_grid)
    harness.sweep(benchmark, case, workload, "incremental", "incremental-fine", 2.0)


def captum_all_classes(
    model: nn.Module, images: Tensor, regions: op.Regions, fills: tuple[float, ...], classes: int
) -> Tensor:
    """What one sweep gives, the captum way: one FeatureAblation call per class and fill.

    Returns (V, K, N, C, H, W) attributions. ``perturbations_per_eval=16`` evaluates all 16
    areas of the N images in one forward call of 16 N images.
    """
    ablation = FeatureAblation(model)
    feature_mask = regions.label_map().to(images.device)[None, None]
    with torch.inference_mode():
        per_fill = [
            torch.stack(
                [
                    ablation.attribute(
                        images,
                        baselines=fill,
                        target=k,
                        feature_mask=feature_mask,
                        perturbations_per_eval=len(regions),
                    )
                    for k in range(classes)
                ]
            )
            for fill in fills
        ]
    return torch.stack(per_fill)


@pytest.mark.parametrize("case", ALL_CASES)
def test_captum_feature_ablation(benchmark: object, harness: Harness, case: Case) -> None:
    """captum on the same work: K classes x V fills FeatureAblation calls over N images
    (paper CNN: 7 x 6 = 42 calls; VGG: 10 x 6 = 60 calls on one image).

    Recorded in the main workload's table, so the summary can divide the dense sweep's ratio
    by captum's (both relative to the forward limit measured beside each).
    """
    workload = workload_of(case, harness.device, n=case.captum_n)
    model, images, regions, fills = (
        workload.model,
        workload.images,
        workload.regions,
        workload.fills,
    )
    with torch.inference_mode():
        classes = int(model(images[:1]).shape[1])
    results: list[Tensor] = []
    calls = len(fills) * classes
    harness.against_limit(
        benchmark,
        case,
        workload,
        lambda: results.append(captum_all_classes(model, images, regions, fills, classes)),
        key="captum",
        label=f"captum FeatureAblation, {calls} calls, perturbations_per_eval="
        f"{len(regions)}, N={case.captum_n}",
        rounds=1,
        warmup=lambda: captum_all_classes(model, images[:1], regions, fills[:1], 1),
        group=workload_of(case, harness.device).name,
        attribute_calls=calls,
    )
    # The same numbers as a sweep: captum's attribution is the logit drop of the region.
    sweep = op.sweep(model, images, regions, fills, output="logits", engine="dense", progress=False)
    for v, fill in enumerate(fills):
        for k in (0, classes - 1):
            torch.testing.assert_close(
                results[-1][v, k].cpu(), sweep.attribution(k, fill=fill), rtol=1e-3, atol=1e-4
            )


def naive_loop(model: nn.Module, images: Tensor, masks: Tensor, fills: tuple[float, ...]) -> Tensor:
    """One occluded image per forward, built and run in Python loops: (N, R, V, K)."""
    outputs = []
    with torch.inference_mode():
        for image in images:
            for mask in masks:
                for fill in fills:
                    occluded = image.clone()
                    occluded[:, mask] = fill
                    outputs.append(torch.softmax(model(occluded[None]), dim=1)[0])
    return torch.stack(outputs).reshape(images.shape[0], masks.shape[0], len(fills), -1)


@pytest.mark.parametrize("case", ALL_CASES)
def test_naive_loop(benchmark: object, harness: Harness, case: Case) -> None:
    """The plain Python loop, one occluded image per forward, on a small N."""
    workload = workload_of(case, harness.device, n=case.naive_n)
    masks = workload.regions.masks.to(harness.device)
    model, images, fills = workload.model, workload.images, workload.fills
    row = harness.against_limit(
        benchmark,
        case,
        workload,
        lambda: naive_loop(model, images, masks, fills),
        key="naive",
        label=f"naive loop, 1 image per forward, N={case.naive_n}",
        rounds=1 if case.smoke else 3,
        warmup=lambda: naive_loop(model, images[:1], masks[:1], fills[:1]),
        group=workload_of(case, harness.device).name,
    )
    benchmark.extra_info["ms_per_image"] = row.seconds / row.images * 1e3  # type: ignore[attr-defined]
