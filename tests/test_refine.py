"""Drill-down sweeps (refine=Refine(...)): coarse windows first, the fine stride near hot ones."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from reference_models import small_cnn

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError, Refine
from occlusion_probe.fidelity import measure_fidelity
from occlusion_probe.refine import RefinePlan

FILLS = (0.0, 0.5)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return small_cnn(in_channels=3, classes=4, size=16).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def windows() -> op.Regions:
    return op.sliding_windows(16, 16, window=4, stride=2)  # 7 x 7 positions


@pytest.fixture(scope="module")
def exact(model: torch.nn.Module, images: torch.Tensor, windows: op.Regions) -> op.SweepResult:
    return op.sweep(model, images, windows, FILLS, engine="dense", progress=False)


def test_plan_cells_partition_the_windows(windows: op.Regions) -> None:
    plan = RefinePlan(windows, Refine(coarse_stride=6, top=0.5))
    # Fine starts 0, 2, ..., 12 (7 per axis); coarse starts 0, 6, 12 (every third).
    assert plan.factors == (3, 3)
    assert plan.coarse == [r * 7 + c for r in (0, 3, 6) for c in (0, 3, 6)]
    cells = plan.cell.reshape(7, 7)
    # Along an axis: fine index 0, 1 -> coarse 0; 2, 3, 4 -> coarse 1 (3); 5, 6 -> coarse 2 (6).
    nearest = [0, 0, 1, 1, 1, 2, 2]
    assert cells.tolist() == [[3 * nearest[i] + nearest[j] for j in range(7)] for i in range(7)]
    assert all(int(plan.cell[p]) == k for k, p in enumerate(plan.coarse))
    assert plan.refined_count_of(plan.top) == math.ceil(0.5 * 9)


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_top_one_equals_the_exact_fine_sweep(
    engine: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    windows: op.Regions,
    exact: op.SweepResult,
) -> None:
    result = op.sweep(
        model, images, windows, FILLS, engine=engine, progress=False,
        refine=Refine(coarse_stride=6, top=1.0),
    )  # fmt: skip
    assert result.computed is not None and bool(result.computed.all())
    torch.testing.assert_close(result.occluded, exact.occluded, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.baseline, exact.baseline)
    assert result.engine == engine
    assert result.engine_note.startswith("DRILL-DOWN")


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_computed_positions_are_exact_and_the_rest_filled_from_cells(
    engine: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    windows: op.Regions,
    exact: op.SweepResult,
) -> None:
    refine = Refine(coarse_stride=6, top=0.25)
    result = op.sweep(model, images, windows, FILLS, engine=engine, progress=False, refine=refine)
    plan = RefinePlan(windows, refine)
    computed = result.computed
    assert computed is not None and computed.shape == (3, 49) and computed.dtype == torch.bool
    assert bool(computed[:, plan.coarse].all())
    assert not bool(computed.all())
    # Computed windows hold the exact outputs; the others their cell's coarse window's.
    difference = (result.occluded - exact.occluded).abs().amax(dim=(2, 3))
    assert float(difference[computed].max()) <= 1e-5
    coarse_of = torch.tensor(plan.coarse)[plan.cell]
    filled = exact.occluded[:, coarse_of]
    torch.testing.assert_close(result.occluded[~computed], filled[~computed], rtol=0, atol=1e-5)
    # Per image: the refined cells are those of the top ceil(0.25 * 9) = 3 coarse windows.
    predicted = exact.baseline.argmax(1)
    for n in range(3):
        c = int(predicted[n])
        drops = exact.baseline[n, c] - exact.occluded[n, plan.coarse, :, c].mean(dim=1)
        top = set(torch.topk(drops, 3).indices.tolist())
        in_top_cells = torch.isin(plan.cell, torch.tensor(sorted(top)))
        on_coarse = torch.zeros(49, dtype=torch.bool)
        on_coarse[plan.coarse] = True
        assert torch.equal(computed[n], in_top_cells | on_coarse)
    # The heat map of a drill-down is defined everywhere the windows cover.
    assert result.heatmap(0, fill=0.0).shape == (3, 16, 16)


def test_class_and_streams(
    model: torch.nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    batches = [(images[:2], torch.tensor([0, 1])), (images[2:], torch.tensor([2]))]
    streamed = op.sweep(
        model, batches, windows, FILLS, engine="dense", progress=False,
        refine=Refine(coarse_stride=(6, 12), top=0.2, cls=2),
    )  # fmt: skip
    whole = op.sweep(
        model, images, windows, FILLS, labels=[0, 1, 2], engine="dense", progress=False,
        refine=Refine(coarse_stride=(6, 12), top=0.2, cls=2),
    )  # fmt: skip
    assert streamed.computed is not None and whole.computed is not None
    assert torch.equal(streamed.computed, whole.computed)
    torch.testing.assert_close(streamed.occluded, whole.occluded)


def test_save_load_and_concatenate_keep_computed(
    tmp_path: object, model: torch.nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    from pathlib import Path

    result = op.sweep(
        model, images, windows, FILLS, engine="dense", progress=False,
        refine=Refine(coarse_stride=6, top=0.3),
    )  # fmt: skip
    path = result.save(Path(str(tmp_path)) / "drill.npz")
    loaded = op.SweepResult.load(path)
    assert loaded.computed is not None and result.computed is not None
    assert torch.equal(loaded.computed, result.computed)
    assert loaded.engine_note == result.engine_note
    exact = op.sweep(model, images[:1], windows, FILLS, engine="dense", progress=False)
    joined = op.SweepResult.concatenate([result, exact])
    assert joined.computed is not None
    assert torch.equal(joined.computed[:3], result.computed) and bool(joined.computed[3].all())


def test_refine_errors(model: torch.nn.Module, images: torch.Tensor, windows: op.Regions) -> None:
    with pytest.raises(InputValueError, match="refine: expected regions made by sliding_windows"):
        op.sweep(model, images, op.Regions.from_label_map(torch.arange(256).reshape(16, 16) % 3),
                 refine=Refine(coarse_stride=4), progress=False)  # fmt: skip
    with pytest.raises(
        InputValueError, match=r"must be a multiple of the windows' stride \(2, 2\)"
    ):
        op.sweep(model, images, windows, refine=Refine(coarse_stride=5), progress=False)
    with pytest.raises(
        InputTypeError, match=r"refine: expected None or an occlusion_probe\.Refine"
    ):
        op.sweep(model, images, windows, refine=4, progress=False)  # type: ignore[call-overload]
    with pytest.raises(InputValueError, match="refine: cannot be combined with reduce="):
        op.sweep(model, images, windows, labels=[0, 1, 2], reduce="class_mean",  # type: ignore[call-overload]
                 refine=Refine(coarse_stride=4), progress=False)  # fmt: skip
    with pytest.raises(InputValueError, match="refine: cannot be combined with checkpoint="):
        op.sweep(model, images, windows, checkpoint="x.ckpt", refine=Refine(coarse_stride=4),
                 progress=False)  # fmt: skip
    with pytest.raises(InputValueError, match=r"Refine.cls must be a class index in \[0, 3\]"):
        op.sweep(model, images, windows, refine=Refine(coarse_stride=4, cls=7), progress=False)


def test_refine_settings_validated() -> None:
    assert Refine(coarse_stride=(4, 8)).coarse_stride == (4, 8)
    with pytest.raises(InputValueError, match=r"Refine.top: expected a float in \(0, 1\], got 0"):
        Refine(coarse_stride=4, top=0)
    with pytest.raises(InputTypeError, match=r"Refine\.top: expected a float"):
        Refine(coarse_stride=4, top="all")  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"Refine\.coarse_stride: expected a positive int"):
        Refine(coarse_stride=0)
    with pytest.raises(InputTypeError, match=r"Refine\.coarse_stride: expected a positive int"):
        Refine(coarse_stride=2.5)  # type: ignore[arg-type]
    with pytest.raises(
        InputValueError, match=r"Refine\.coarse_stride: expected a positive int or a tuple"
    ):
        Refine(coarse_stride=(4, 4, 4, 4))
    assert Refine(coarse_stride=(4, 4, 4)).coarse_stride == (4, 4, 4)
    with pytest.raises(InputTypeError, match=r"Refine\.cls: expected None"):
        Refine(coarse_stride=4, cls="cat")  # type: ignore[arg-type]


def test_refine_and_approximate_refuse_distributed_runs(
    monkeypatch: pytest.MonkeyPatch,
    model: torch.nn.Module,
    images: torch.Tensor,
    windows: op.Regions,
) -> None:
    from occlusion_probe import distributed

    monkeypatch.setattr(distributed, "current_shard", lambda: object())
    with pytest.raises(InputValueError, match=r"refine: cannot run under torch\.distributed"):
        op.sweep(model, images, windows, refine=Refine(coarse_stride=4), progress=False)
    with pytest.raises(InputValueError, match=r"approximate: cannot run under torch\.distributed"):
        op.sweep(model, images, windows, approximate=0.9, progress=False)
    monkeypatch.undo()
    with pytest.raises(InputValueError, match="approximate: cannot be combined with checkpoint="):
        op.sweep(model, images, windows, approximate=0.9, checkpoint="x.ckpt", progress=False)


def _reference_drill_down(
    exact: op.SweepResult, plan: RefinePlan, top: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(occluded, computed) of a drill-down at fraction `top` built from the exact sweep with
    plain loops: the top coarse windows' cells (predicted class, mean over fills) keep their
    exact outputs, every other window takes its cell's coarse window's."""
    occluded = exact.occluded.clone()
    computed = torch.ones(occluded.shape[:2], dtype=torch.bool)
    count = math.ceil(top * len(plan.coarse) - 1e-9)
    for n in range(occluded.shape[0]):
        c = int(exact.baseline[n].argmax())
        drops = [
            float(exact.baseline[n, c] - exact.occluded[n, p, :, c].mean()) for p in plan.coarse
        ]
        hot = set(sorted(range(len(drops)), key=lambda k: -drops[k])[:count])
        for r in range(occluded.shape[1]):
            cell = int(plan.cell[r])
            if cell not in hot and r != plan.coarse[cell]:
                occluded[n, r] = exact.occluded[n, plan.coarse[cell]]
                computed[n, r] = False
    return occluded, computed


def test_candidate_tops_and_target_settings_validated() -> None:
    assert Refine(coarse_stride=4, top=0.3, ssim=0.9).candidate_tops() == (0.3, 0.6, 1.0)
    assert Refine(coarse_stride=4, top=0.3).candidate_tops() == (0.3,)
    assert Refine(coarse_stride=4, top=1.0, ssim=0.9).candidate_tops() == (1.0,)
    with pytest.raises(InputValueError, match=r"Refine\.ssim: expected a float in \(0, 1\], got 0"):
        Refine(coarse_stride=4, ssim=0)
    with pytest.raises(
        InputTypeError, match=r"Refine\.ssim: expected a float in \(0, 1\], got str"
    ):
        Refine(coarse_stride=4, ssim="high")  # type: ignore[arg-type]
    with pytest.raises(
        InputValueError, match=r"Refine\.calibration_images: expected a positive int, got 0"
    ):
        Refine(coarse_stride=4, calibration_images=0)
    with pytest.raises(InputTypeError, match=r"Refine\.calibration_images: expected a positive"):
        Refine(coarse_stride=4, calibration_images=2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_target_chooses_the_smallest_top_that_meets_it(
    engine: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    windows: op.Regions,
    exact: op.SweepResult,
) -> None:
    refine = Refine(coarse_stride=4, top=0.1, ssim=0.35, calibration_images=2)
    plan = RefinePlan(windows, refine)
    first = op.SweepResult(exact.baseline[:2], exact.occluded[:2], None, windows, exact.fill_labels)
    measured = {
        top: measure_fidelity(
            windows, first.baseline, first.occluded, _reference_drill_down(first, plan, top)[0],
            1.0, 0.35,
        ).ssim
        for top in refine.candidate_tops()
    }  # fmt: skip
    expected = next(top for top in refine.candidate_tops() if measured[top] >= 0.35)
    assert expected not in (0.1, 1.0)  # the target picks a candidate in between
    result = op.sweep(model, images, windows, FILLS, engine=engine, progress=False, refine=refine)
    fidelity = result.fidelity
    assert fidelity is not None and fidelity.top == expected
    assert fidelity.tau == 1.0 and fidelity.calibration_images == 2 and fidelity.target == 0.35
    # What is reported is what the sweep's own outputs on the first two images measure
    # (against its own engine's exact outputs: the dense `exact` differs from the
    # incremental engine's by float rounding, depending on how its regions were grouped).
    own = measure_fidelity(windows, exact.baseline[:2], exact.occluded[:2], result.occluded[:2],
                           1.0, 0.35)  # fmt: skip
    close = 1e-9 if engine == "dense" else 1e-5
    assert fidelity.ssim == pytest.approx(own.ssim, abs=close) and fidelity.ssim >= 0.35
    assert fidelity.max_abs_error == pytest.approx(own.max_abs_error, abs=close)
    assert fidelity.max_abs_error > 0  # windows were filled in
    # Every image, calibration or not, refined the cells of its top coarse windows.
    assert result.computed is not None
    assert torch.equal(result.computed, _reference_drill_down(exact, plan, expected)[1])
    assert f"top {expected:g}, chosen for SSIM >= 0.35" in result.engine_note
    assert f"APPROXIMATE: drill-down computing the top {expected:g}" in result.engine_note


def test_a_target_of_one_computes_every_window(
    model: torch.nn.Module, images: torch.Tensor, windows: op.Regions, exact: op.SweepResult
) -> None:
    result = op.sweep(
        model, images, windows, FILLS, engine="dense", progress=False,
        refine=Refine(coarse_stride=6, top=0.1, ssim=1.0, calibration_images=1),
    )  # fmt: skip
    assert result.fidelity is not None and result.fidelity.top == 1.0
    assert "drill-down computing every window (top 1)" in result.engine_note
    assert result.computed is not None and bool(result.computed.all())
    torch.testing.assert_close(result.occluded, exact.occluded, rtol=0, atol=1e-5)


def test_without_a_target_no_fidelity(
    model: torch.nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    result = op.sweep(model, images, windows, FILLS, engine="dense", progress=False,
                      refine=Refine(coarse_stride=6, top=0.25))  # fmt: skip
    assert result.fidelity is None
    assert "APPROXIMATE" not in result.engine_note
    assert "top 0.25, predicted class" in result.engine_note


def _loop_drill_down(
    exact: torch.Tensor, plan: RefinePlan, baseline: torch.Tensor, top: float
) -> torch.Tensor:
    """The drill-down's outputs by a plain loop over windows and their nearest coarse window."""
    grid = plan.grid
    positions = list(itertools.product(*[range(len(s)) for s in grid.starts]))
    factors = plan.factors
    coarse_index = [
        p for p in positions if all(i % f == 0 for i, f in zip(p, factors, strict=True))
    ]
    flat = {p: r for r, p in enumerate(positions)}
    out = exact.clone()
    n = exact.shape[0]
    count = max(1, math.ceil(top * len(coarse_index) - 1e-9))
    for image in range(n):
        cls = int(baseline[image].argmax())
        drops = [
            float(baseline[image, cls] - exact[image, flat[c], :, cls].mean()) for c in coarse_index
        ]
        chosen = set(sorted(range(len(coarse_index)), key=lambda i: -drops[i])[:count])
        for p in positions:
            nearest = []
            for i, f, size in zip(p, factors, grid.shape, strict=True):
                q, rem = divmod(i, f)
                cell = q + (1 if 2 * rem > f else 0)
                nearest.append(min(cell, (size - 1) // f) * f)
            owner = coarse_index.index(tuple(nearest))
            if owner not in chosen and tuple(p) not in coarse_index:
                out[image, flat[p]] = exact[image, flat[tuple(nearest)]]
    return out


@pytest.mark.parametrize(
    ("shape", "window", "stride", "coarse"),
    [((40,), 8, 2, 8), ((12, 12, 12), 4, 2, (4, 4, 8))],
    ids=["1d", "3d"],
)
def test_drill_down_at_any_rank_equals_a_loop_over_cells(
    shape: tuple[int, ...], window: int, stride: int, coarse: int | tuple[int, ...]
) -> None:
    windows = op.sliding_windows(shape, window, stride)
    plan = RefinePlan(windows, Refine(coarse_stride=coarse, top=0.3))
    generator = torch.Generator().manual_seed(0)
    exact = torch.rand(3, len(windows), 2, 4, generator=generator)
    baseline = torch.rand(3, 4, generator=generator) + 1
    assert torch.equal(
        plan.from_exact(baseline, exact, 0.3), _loop_drill_down(exact, plan, baseline, 0.3)
    )


def test_drill_down_sweeps_volumes_and_signals() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    volumes = torch.rand(2, 1, 12, 12, 12)
    windows = op.sliding_windows((12, 12, 12), 4, 2)
    exact = op.sweep(model, volumes, windows, fills=0.0, engine="dense", progress=False)
    full = op.sweep(model, volumes, windows, fills=0.0, engine="dense", refine=Refine(coarse_stride=4, top=1.0), progress=False)  # fmt: skip
    torch.testing.assert_close(full.occluded, exact.occluded, rtol=1e-5, atol=1e-6)
    some = op.sweep(model, volumes, windows, fills=0.0, engine="dense", refine=Refine(coarse_stride=4, top=0.2), progress=False)  # fmt: skip
    assert some.computed is not None and 0 < int(some.computed.sum()) < some.computed.numel()
    assert some.heatmap(0).shape == (2, 12, 12, 12)
    with pytest.raises(
        InputValueError, match=r"refine: coarse_stride \(4, 4\) has 2 entries, the windows 3"
    ):
        op.sweep(model, volumes, windows, refine=Refine(coarse_stride=(4, 4)), progress=False)
