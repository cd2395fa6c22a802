"""Region-aware fills: ROAD's imputation against its reference algorithm, and its cost in a sweep.

The reference is ROAD's scheme as its implementation runs it: per image and mask, the sparse
system is built (vectorised, as ``NoisyLinearImputer.setup_sparse_system`` does) and solved by
``scipy.sparse.linalg.spsolve``. `occlusion_probe.fills.linear_imputation` factorises once
per mask and solves every image and channel sharing it at once. Outputs are asserted equal
(noise 0); the ratio printed is the reference's time over ours, measured in the same test,
each the minimum over rounds. Masks: the cells of a 4x4 grid, and the unions a remove curve
builds (k = 1..15 cells), in one order for all images (as curves with a class ranking) or in
each image's own order (no mask shared). Run: ``pytest benchmarks/test_fills.py -s``; CI runs
``-k smoke``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from models import paper_cnn
from torch import Tensor

import occlusion_probe as op

_WEIGHTS = [
    (dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if dy or dx
]


def road_solve(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's imputation of one image (C, H, W) and mask (H, W): system built vectorised per
    call, one spsolve; returns the values (C, m) at the removed pixels."""
    h, w = removed.shape
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    m = unknown.size
    variable = np.zeros(h * w, dtype=np.int64)
    variable[unknown] = np.arange(m)
    ys, xs = unknown // w, unknown % w
    total = np.ones(m)
    rows, cols, vals = [], [], []
    right = np.zeros((m, image.shape[0]))
    pixels = image.reshape(image.shape[0], -1)
    for dy, dx, weight in _WEIGHTS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        total[~inside] -= weight
        ids = np.flatnonzero(inside)
        where = ny[inside] * w + nx[inside]
        gone = flat[where]
        right[ids[~gone]] -= weight * pixels[:, where[~gone]].T
        rows.append(ids[gone])
        cols.append(variable[where[gone]])
        vals.append(np.full(int(gone.sum()), weight))
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    vals.append(-total)
    matrix = scipy.sparse.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m)
    )
    solution = scipy.sparse.linalg.spsolve(matrix, right)
    return np.reshape(solution, (m, -1)).T


def reference(images: Tensor, masks: Tensor) -> list[np.ndarray]:
    """Per image i and mask masks[i, j] (masks (n, k, H, W)): ROAD's values, in that order."""
    arrays = images.double().numpy()
    return [
        road_solve(arrays[i], mask.numpy()) for i in range(images.shape[0]) for mask in masks[i]
    ]


def ours(images: Tensor, masks: Tensor, shared: bool) -> list[np.ndarray]:
    """The same values from a fresh `linear_imputation(noise=0)` (factorisations included)."""
    fill = op.fills.linear_imputation(noise=0.0)
    n, k = masks.shape[:2]
    if shared:  # every image has the same k masks: one solve per mask for all images
        values = fill.regions(images, masks[0])
        return [values[j][i].double().numpy() for i in range(n) for j in range(k)]
    out = []
    for j in range(k):  # the j-th point of every image's curve, in one call
        filled = fill(images, masks[:, j]).flatten(2)
        out.extend((j, i, filled[i][:, masks[i, j].flatten()]) for i in range(n))
    ordered = sorted(out, key=lambda item: (item[1], item[0]))
    return [values.double().numpy() for _, _, values in ordered]


def curve_unions(regions: op.Regions, n: int, shared: bool, seed: int = 0) -> Tensor:
    """(n, R - 1, H, W): the unions of the first k = 1..R-1 regions of an order."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randperm(len(regions), generator=generator)
    orders = [
        first if shared else torch.randperm(len(regions), generator=generator) for _ in range(n)
    ]
    return torch.stack(
        [
            torch.stack([regions.masks[o[:k]].any(dim=0) for k in range(1, len(regions))])
            for o in orders
        ]
    )


def best_of(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def compare(images: Tensor, masks: Tensor, shared: bool, rounds: int) -> float:
    """Reference time over ours (asserting equal outputs); both timed in this call."""
    want = reference(images, masks)
    got = ours(images, masks, shared)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    slow = best_of(lambda: reference(images, masks), rounds)
    fast = best_of(lambda: ours(images, masks, shared), rounds)
    return slow / fast


CASES = {
    "cells": lambda regions, n: regions.masks[None].expand(n, *regions.masks.shape),
    "unions, one order": lambda regions, n: curve_unions(regions, n, shared=True),
    "unions, own orders": lambda regions, n: curve_unions(regions, n, shared=False),
}


@pytest.mark.parametrize("size, channels, n", [(48, 1, 16), (224, 3, 4)], ids=["48", "224"])
@pytest.mark.parametrize("case", list(CASES))
def test_imputation_against_road(
    benchmark: object, case: str, size: int, channels: int, n: int
) -> None:
    images = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))
    masks = CASES[case](op.grid(size, size, 4, 4), n)
    ratio = compare(images, masks, shared=case != "unions, own orders", rounds=2)
    print(f"\nimputation {case}, {n} x {channels}x{size}x{size}: reference / ours = {ratio:.1f}x")
    benchmark.pedantic(  # type: ignore[attr-defined]
        ours, args=(images, masks, case != "unions, own orders"), rounds=1, iterations=1
    )


def sweep_seconds(images: Tensor, fills: object, rounds: int) -> float:
    model = paper_cnn().eval()
    regions = op.grid(48, 48)
    run = lambda: op.sweep(model, images, regions, fills=fills, progress=False, batch_size=64)  # noqa: E731
    run()  # warm: the engine reads the model once
    return best_of(run, rounds)


def test_paper_cnn_sweep_imputation_against_constant(benchmark: object) -> None:
    images = torch.rand(64, 1, 48, 48, generator=torch.Generator().manual_seed(2))
    constant = sweep_seconds(images, [0.0], rounds=2)
    imputed = sweep_seconds(images, [op.fills.linear_imputation()], rounds=2)
    print(f"\npaper CNN sweep, 64 images: linear_imputation / constant = {imputed / constant:.2f}x")
    benchmark.pedantic(  # type: ignore[attr-defined]
        sweep_seconds, args=(images[:8], [op.fills.linear_imputation()], 1), rounds=1, iterations=1
    )


@pytest.mark.parametrize("case", list(CASES))
def test_smoke_imputation(case: str) -> None:
    images = torch.rand(2, 2, 12, 12, generator=torch.Generator().manual_seed(3))
    masks = CASES[case](op.grid(12, 12, 4, 4), 2)
    assert compare(images, masks, shared=case != "unions, own orders", rounds=1) > 0
