"""The architectures people use, at 224x224: dense and incremental sweeps vs the forward limit.

VGG-16, ResNet-18, MobileNetV2, DenseNet-121 and ConvNeXt-T (sizes in models.py), one image,
2 fills (0.0, 0.5), 16x16 patches (14x14 grid, 392 occluded images) and 32x32 patches (7x7
grid, 98). Each sweep is timed against the forward limit (the best plain batched forward of
the prebuilt occluded images over batch sizes and memory formats); an incremental sweep's
row also carries its FLOP bound, so the summary shows the fraction of it that was reached.
Tests whose id contains ``smoke`` run the same architectures at their tiny test sizes on
32x32 inputs (8x8 patches), check incremental = dense, and never speed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from models import ARCHITECTURE_SMOKES, ARCHITECTURES, Case, workload_of

import occlusion_probe as op

if TYPE_CHECKING:
    from conftest import Harness

#: The target for the dense sweep with batch_size="auto", on every model and grid.
DENSE_TARGET = 0.95


def _cases() -> list[object]:
    params: list[object] = []
    for case in ARCHITECTURES:
        for patch in (16, 32):
            grid = case.shape[1] // patch
            params.append(pytest.param(case, grid, id=f"{case.id}-{patch}px"))
    for case in ARCHITECTURE_SMOKES:
        patch = case.shape[1] // case.grid
        params.append(pytest.param(case, case.grid, id=f"{case.id}-{patch}px"))
    return params


CASES = _cases()
# Dense outputs of this session by (case, grid), kept so that the incremental test can check
# its outputs against them without a second dense sweep (which would double a 224x224 run).
_DENSE: dict[tuple[str, int], op.SweepResult] = {}


@pytest.mark.parametrize(("case", "grid"), CASES)
def test_architecture_dense_sweep(
    benchmark: object, harness: Harness, case: Case, grid: int
) -> None:
    """The whole dense sweep with batch_size="auto"; target: >= 0.95 of the forward limit."""
    workload = workload_of(case, harness.device, grid=grid)
    result = harness.sweep(benchmark, case, workload, "dense", "dense", DENSE_TARGET)
    assert result.engine == "dense"
    assert tuple(result.occluded.shape[:3]) == (1, grid * grid, len(case.fills))
    _DENSE[case.id, grid] = result


@pytest.mark.parametrize(("case", "grid"), CASES)
def test_architecture_incremental_sweep(
    benchmark: object, harness: Harness, case: Case, grid: int
) -> None:
    """The whole incremental sweep; its ratio target (16x16 patches only) is the case's, and
    every incremental row should reach 70 % of its FLOP bound. The outputs equal the dense
    sweep's (run here for smoke cases, taken from the dense test otherwise)."""
    workload = workload_of(case, harness.device, grid=grid)
    target = case.incremental_target if grid == case.grid else None
    result = harness.sweep(benchmark, case, workload, "incremental", "incremental", target)
    assert result.engine == "incremental", result.engine_note
    dense = _DENSE.get((case.id, grid))
    if dense is None and case.smoke:
        dense = workload.sweep("dense")
    if dense is None:
        pytest.skip("the dense sweep of this workload did not run in this session (-k)")
    difference = float((result.occluded - dense.occluded).abs().max())
    benchmark.extra_info["max_abs_difference_to_dense"] = difference  # type: ignore[attr-defined]
    torch.testing.assert_close(result.baseline, dense.baseline, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.occluded, dense.occluded, rtol=0, atol=1e-5)
