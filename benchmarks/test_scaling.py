"""Scaling series on the paper CNN: how a sweep's cost grows with N and with the grid size.

The dense engine's work is N x R x V full forwards, so its time should grow linearly in N and
in R (images/s constant). The incremental engine's work per occluded image shrinks as the
areas get smaller, so its images/s should rise with the grid size while staying flat in N.
Each point is the best of two timed rounds, each paired with the forward limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from models import PAPER, PAPER_SMOKE, Case, workload_of

import occlusion_probe as op

if TYPE_CHECKING:
    from conftest import Harness

ENGINES = ("dense", "incremental")
# (case, N values at its grid, grid sizes at its smallest N)
SERIES = {
    "paper": (PAPER, (4, 16, 64), (4, 8, 16)),
    "paper-smoke": (PAPER_SMOKE, (1, 2), (2, 4)),
}


def _points(over: str) -> list[object]:
    params: list[object] = []
    for name, (case, ns, grids) in SERIES.items():
        values = ns if over == "n" else grids
        for engine in ENGINES:
            for value in values:
                params.append(
                    pytest.param(case, engine, value, id=f"{name}-{engine}-{over}{value}")
                )
    return params


def _time_point(
    benchmark: object, harness: Harness, case: Case, engine: str, n: int, grid: int, over: str
) -> None:
    workload = workload_of(case, harness.device, n=n, grid=grid)
    model, images, regions, fills = (
        workload.model,
        workload.images,
        workload.regions,
        workload.fills,
    )
    fixed = f"{grid}x{grid} grid, N varies" if over == "n" else f"N={n}, grid varies"
    harness.against_limit(
        benchmark,
        case,
        workload,
        lambda: op.sweep(model, images, regions, fills, engine=engine, progress=False),
        key=f"{engine}-{over}",
        label=f"{engine}: N={n}, {grid}x{grid} grid, {workload.count} images",
        rounds=1 if case.smoke else 2,
        warmup=lambda: op.sweep(
            model, images[:1], regions, fills[:1], engine=engine, progress=False
        ),
        group=f"scaling: {case.title}, {len(fills)} fills, {fixed}",
        n=n,
        grid=grid,
        engine=engine,
    )


@pytest.mark.parametrize(("case", "engine", "n"), _points("n"))
def test_scaling_over_n(
    benchmark: object, harness: Harness, case: Case, engine: str, n: int
) -> None:
    """Sweep time over N at the case's grid."""
    _time_point(benchmark, harness, case, engine, n, case.grid, "n")


@pytest.mark.parametrize(("case", "engine", "grid"), _points("grid"))
def test_scaling_over_grid(
    benchmark: object, harness: Harness, case: Case, engine: str, grid: int
) -> None:
    """Sweep time over the grid size at the smallest N of the series."""
    n = SERIES[case.id][1][0]
    _time_point(benchmark, harness, case, engine, n, grid, "grid")
