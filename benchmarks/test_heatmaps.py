"""Fine heat maps: overlapping sliding windows on the 224x224 architectures (issue 14).

VGG-16 (1/2 width) and ResNet-18 at 3x224x224, N=1, one fill (0.0), 16x16 windows at stride
4 (53x53 = 2,809 positions, 2,809 occluded images), on a photograph (matplotlib's sample
``grace_hopper.jpg``, resized to 224x224: a heat map of a real image, not of noise): the
dense sweep, the exact incremental sweep, the drill-down sweep
(``refine=Refine(coarse_stride=16, top=0.25)``: 14x14 coarse windows, then the fine stride in
a quarter of their cells), the drill-down for a target (``Refine(coarse_stride=8,
top=0.02, ssim=0.9, calibration_images=1)``: the smallest top of 0.02, 0.04, 0.08, ..., 1.0 that
reaches SSIM and R^2 0.9), the approximate sweep (``approximate=Approximate(ssim=0.9,
calibration_images=1)``), both together, and captum's ``Occlusion`` with the same window,
stride and baseline, each as a ratio to the forward limit (plain forwards of prebuilt
occluded images, as in test_architectures.py). Every drill-down row's note gives its heat
map's SSIM against the exact sweep of this session. A drill-down or approximate sweep
evaluates fewer or cheaper occluded images; their ratios count all 2,809 positions as done,
so they read as "equivalent images per second". The approximate sweep's calibration (the
exact sweep of its calibration image and each threshold tried) is timed inside the sweep and
reported too, with a second row that leaves it out (calibration is paid once per model and
settings on a few images, then reused over a data set). Each row runs one round; the
exact sweep has a second row, timed after one untimed sweep of the same model and windows
(what each further image costs: the prepared engine is kept, and the convolutions'
one-off setup for each window shape is done).
With N=1 the calibration image is the image swept: the fidelity a calibrated row reports
is the true SSIM of that heat map, and its setting was chosen on that same image.

The random-weight nets respond to edges all over the photograph, so their heat maps are
spread out. The third case is a classifier trained to recognise a shape (trained.py: VGG-16's
convolutions at 1/2 width with class score maps and a global max pool, trained from scratch
on crops of the photograph, about five minutes on first use, then cached), swept on two
224x224 scenes, a shape pasted on the photograph: the first scene calibrates, the second is
held out, and every drill-down and approximate row's note gives the SSIM and R^2 of each. Its rows
are the exact, drill-down and approximate ones, with coarse strides 8, 16 and 32 for a
target (no dense or captum rows: on two images they would add about five minutes, and the
random-weight VGG-16 shows both on the same architecture).

Tests whose id contains ``smoke`` run the tiny architectures on 3x32x32 with 8x8 windows at
stride 2 on random images and check the equalities instead of speed: incremental = dense,
drill-down's computed windows = dense, a calibrated row's reported fidelity = its SSIM
against the exact sweep, approximate with a threshold that cuts nothing = dense, and
``SweepResult.heatmap`` = captum's ``Occlusion``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import torch
from captum.attr import Occlusion
from conftest import timing_prepare
from models import ARCHITECTURE_SMOKES, ARCHITECTURES, Case, Workload, photograph, workload_of
from torch import Tensor
from trained import TRAINED_VGG16, scenes

import occlusion_probe as op
from occlusion_probe.fidelity import measure_fidelity

if TYPE_CHECKING:
    from conftest import Harness

# The chunk engine calls `calibrate` through its module global, so that global is timed.
chunks_module = importlib.import_module("occlusion_probe.chunks")
# The exact sweep of each case in this session (the drill-down + approximate test compares
# its heat maps with it).
_EXACT: dict[str, op.SweepResult] = {}

FILLS = (0.0,)
#: Drill-down and approximate settings of the full-size rows.
REFINE = op.Refine(coarse_stride=16, top=0.25)
APPROXIMATE = op.Approximate(ssim=0.9, calibration_images=1)
#: Coarse strides of the drill-down rows that choose their top for a target (full size).
TARGET_STRIDES = (8,)
#: The same for the trained model, whose evidence is local.
TRAINED_TARGET_STRIDES = (8, 16, 32)


def _cases() -> list[Any]:
    chosen = [case for case in ARCHITECTURES if case.id in ("vgg16", "resnet18")]
    smokes = [case for case in ARCHITECTURE_SMOKES if case.id in ("vgg16-smoke", "resnet18-smoke")]
    return [
        pytest.param(case, id=f"{case.id}-windows") for case in (*chosen, TRAINED_VGG16, *smokes)
    ]


CASES = _cases()
#: The cases of the dense and captum rows: not the trained one, whose two scenes would take
#: them about 5 minutes more (the random-weight VGG-16 shows both on the same architecture).
PLAIN_CASES = [param for param in CASES if not param.values[0].trained]


def _geometry(case: Case) -> tuple[int, int, int]:
    """(window, stride, coarse stride) in pixels: 16/4/16 at 224x224, 8/2/8 on smoke sizes."""
    return (8, 2, 8) if case.smoke else (16, 4, REFINE.coarse_stride[0])  # type: ignore[index]


def windows_workload(case: Case, device: torch.device) -> Workload:
    """The case's model with sliding windows instead of its grid, on the photograph (N=1;
    the smoke sizes keep their random image; the trained case sweeps its two scenes)."""
    base = workload_of(case, device, n=1)
    window, stride, _ = _geometry(case)
    channels, height, width = case.shape
    regions = op.sliding_windows(height, width, window=window, stride=stride)
    if case.trained:
        images, source = scenes()[0].to(device), "2 scenes: shapes on the photograph"
    elif case.smoke or channels != 3:
        images, source = base.images, "random"
    else:
        images, source = photograph(height, width).to(device), "photograph"
    name = (
        f"{case.title}, N={images.shape[0]} ({source}), "
        f"{window}x{window} windows at stride {stride} ({len(regions)} positions) x "
        f"{len(FILLS)} fill"
    )
    return Workload(name, base.model, images, regions, FILLS)


@contextlib.contextmanager
def timing_calibration(seconds: list[float]) -> Iterator[None]:
    """Append the duration of every calibration inside `sweep` (the chunk engine calls it) to `seconds`."""
    original = chunks_module.calibrate

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    chunks_module.calibrate = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        chunks_module.calibrate = original  # type: ignore[assignment]


def _run(
    harness: Harness,
    benchmark: object,
    case: Case,
    workload: Workload,
    key: str,
    label: str,
    call: Callable[[], Any],
    results: list[Any],
    warmup: Callable[[], Any] | None = None,
    note_prefix: Callable[[Any], str] | None = None,
) -> Any:
    """Time `call` against the forward limit (after `warmup`, if given); `note_prefix` turns
    the last result into text put before its engine note. Rows of the
    incremental engine also get the time the round spent preparing it (torch.export and
    planning 2,809 regions: paid once per model and window geometry, then kept) and, for
    the exact rows, the FLOP and traffic bounds of the groups that ran."""
    incremental = key not in ("dense", "captum")
    exact = key.startswith("incremental")
    prepares: list[float] = []
    bounds = functools.cache(lambda: harness.bounds(workload))

    def method() -> None:
        prepares.clear()
        with timing_prepare(prepares) if incremental else contextlib.nullcontext():
            results.append(call())

    harness.against_limit(
        benchmark,
        case,
        workload,
        method,
        key=key,
        label=label,
        rounds=1,
        warmup=warmup,
        note=(
            (
                lambda: (
                    (note_prefix(results[-1]) + "; " if note_prefix else "")
                    + results[-1].engine_note
                )
            )
            if key != "captum"
            else None
        ),
        prepare_seconds=(lambda: sum(prepares)) if incremental else None,
        flop_bound=(lambda: bounds()[0]) if exact else None,
        traffic_bound=(lambda: bounds()[1]) if exact else None,
    )
    return results[-1]


def _sweep(workload: Workload, **options: Any) -> Callable[[], op.SweepResult]:
    return lambda: op.sweep(
        workload.model, workload.images, workload.regions, workload.fills, progress=False, **options
    )


@pytest.mark.parametrize("case", PLAIN_CASES)
def test_windows_dense(benchmark: object, harness: Harness, case: Case) -> None:
    workload = windows_workload(case, harness.device)
    result: list[op.SweepResult] = []
    _run(harness, benchmark, case, workload, "dense", 'sweep(engine="dense")',
         _sweep(workload, engine="dense"), result)  # fmt: skip
    assert result[-1].occluded.shape[1] == len(workload.regions)


@pytest.mark.parametrize("case", CASES)
def test_windows_incremental(benchmark: object, harness: Harness, case: Case) -> None:
    workload = windows_workload(case, harness.device)
    result: list[op.SweepResult] = []
    _run(harness, benchmark, case, workload, "incremental", 'sweep(engine="incremental"), exact',
         _sweep(workload, engine="incremental"), result)  # fmt: skip
    assert result[-1].engine == "incremental", result[-1].engine_note
    _EXACT[case.id] = result[-1]
    if case.smoke:
        dense = workload.sweep("dense")
        torch.testing.assert_close(result[-1].occluded, dense.occluded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if not c.values[0].smoke])
def test_windows_incremental_repeated(benchmark: object, harness: Harness, case: Case) -> None:
    """The exact sweep once more after one untimed sweep of the same model and windows:
    what each further image or data-set batch costs, with the graph and plans kept
    (IncrementalEngine.prepare) and the convolutions' one-off setup for each window shape
    already done."""
    workload = windows_workload(case, harness.device)
    result: list[op.SweepResult] = []
    sweep = _sweep(workload, engine="incremental")
    _run(harness, benchmark, case, workload, "incremental-repeated",
         'sweep(engine="incremental"), exact, repeated', sweep, result, warmup=sweep)  # fmt: skip
    assert "kept from an earlier sweep" in result[-1].engine_note


def _against_exact(case: Case, workload: Workload, swept: op.SweepResult) -> str:
    """The SSIM and Spearman of a drill-down's heat map against the exact sweep of this
    session (swept here when the exact test did not run), per image, as a note clause. A
    calibrated result must report what its calibration images (the first) measure; the
    trained case's second image is held out, so its figures say how the setting carries to an
    image it was not chosen on."""
    exact = _EXACT.get(case.id) or workload.sweep("incremental")
    _EXACT[case.id] = exact
    measured = [
        measure_fidelity(workload.regions, exact.baseline[i : i + 1], exact.occluded[i : i + 1],
                         swept.occluded[i : i + 1], tau=1.0, target=0.9)
        for i in range(exact.baseline.shape[0])
    ]  # fmt: skip
    fidelity = swept.fidelity
    if fidelity is not None:
        calibrated = measured[: fidelity.calibration_images]
        on_calibration = sum(m.ssim for m in calibrated) / len(calibrated)
        r2_on_calibration = sum(m.r2 for m in calibrated) / len(calibrated)
        assert abs(fidelity.ssim - on_calibration) <= 1e-3, (fidelity, measured)
        assert abs(fidelity.r2 - r2_on_calibration) <= 1e-3, (fidelity, measured)
    computed = swept.computed
    share = (
        "" if computed is None else f", {float(computed.double().mean()):.1%} of windows computed"
    )
    ssims = ", ".join(f"{m.ssim:.3f}" for m in measured)
    r2s = ", ".join(f"{m.r2:.3f}" for m in measured)
    spearmans = ", ".join(f"{m.spearman:.3f}" for m in measured)
    per_image = " (per image)" if len(measured) > 1 else ""
    return (
        f"heat-map SSIM against the exact sweep{per_image} {ssims}, R^2 {r2s}, "
        f"region-ranking Spearman {spearmans}{share}"
    )


@pytest.mark.parametrize("case", CASES)
def test_windows_drill_down(benchmark: object, harness: Harness, case: Case) -> None:
    workload = windows_workload(case, harness.device)
    _, _, coarse = _geometry(case)
    refine = op.Refine(coarse_stride=coarse, top=REFINE.top)
    result: list[op.SweepResult] = []
    swept = _run(harness, benchmark, case, workload, "drill-down",
                 f"sweep(refine=Refine(coarse_stride={coarse}, top={refine.top:g})), incremental",
                 _sweep(workload, engine="incremental", refine=refine), result,
                 note_prefix=lambda r: _against_exact(case, workload, r))  # fmt: skip
    computed = swept.computed
    assert computed is not None
    benchmark.extra_info["computed_fraction"] = float(computed.double().mean())  # type: ignore[attr-defined]
    if case.smoke:
        dense = workload.sweep("dense")
        difference = (swept.occluded - dense.occluded).abs().amax(dim=(2, 3))
        assert float(difference[computed].max()) <= 1e-5


def _target_cases() -> list[Any]:
    """(case, coarse stride) of the rows that choose their top for a target."""
    cases = [param.values[0] for param in CASES]
    return [
        pytest.param(case, coarse, id=f"{case.id}-windows-coarse{coarse}")
        for case in cases
        for coarse in (
            (8,) if case.smoke else TRAINED_TARGET_STRIDES if case.trained else TARGET_STRIDES
        )
    ]


def _target_refine(case: Case, coarse: int) -> op.Refine:
    """A drill-down from a top of 0.02 (0.05 on the smoke sizes) up to the fraction that
    reaches SSIM and R^2 0.9 (0.5 on the smoke sizes' random images) on the first image."""
    if case.smoke:
        return op.Refine(coarse_stride=coarse, top=0.05, ssim=0.5, calibration_images=1)
    return op.Refine(coarse_stride=coarse, top=0.02, ssim=0.9, calibration_images=1)


@pytest.mark.parametrize(("case", "coarse"), _target_cases())
def test_windows_drill_down_for_target(
    benchmark: object, harness: Harness, case: Case, coarse: int
) -> None:
    """The drill-down that chooses its top for a target SSIM on its calibration image,
    timed with that calibration and (second row) without it."""
    workload = windows_workload(case, harness.device)
    refine = _target_refine(case, coarse)
    calibration: list[float] = []

    def call() -> op.SweepResult:
        calibration.clear()
        with timing_calibration(calibration):
            return _sweep(workload, engine="incremental", refine=refine)()

    row_label = (
        f"sweep(refine=Refine(coarse_stride={coarse}, top={refine.top:g}, ssim={refine.ssim:g}, "
        "calibration_images=1))"
    )
    _calibrated_rows(harness, benchmark, case, workload, f"drill-down-target-{coarse}",
                     row_label, call, calibration)  # fmt: skip


def _calibrated_rows(
    harness: Harness,
    benchmark: object,
    case: Case,
    workload: Workload,
    key: str,
    label: str,
    call: Callable[[], op.SweepResult],
    calibration: list[float],
) -> op.SweepResult:
    """The rows of a drill-down for a target: timed with its calibration (the note gives
    its heat map's SSIM against the exact sweep) and without it; its fidelity in the
    extra info."""
    result: list[op.SweepResult] = []
    swept: op.SweepResult = _run(harness, benchmark, case, workload, key,
                                 f"{label}, calibration included", call, result,
                                 note_prefix=lambda r: _against_exact(case, workload, r))  # fmt: skip
    fidelity = swept.fidelity
    assert fidelity is not None and fidelity.top is not None
    info = benchmark.extra_info  # type: ignore[attr-defined]
    info.update(top=fidelity.top, tau=fidelity.tau, ssim=fidelity.ssim,
                calibration_seconds=sum(calibration))  # fmt: skip
    _without_calibration(harness, benchmark, f"{key}-calibrated", label, calibration)
    return swept


def _approximate_call(
    case: Case, workload: Workload, **options: Any
) -> tuple[op.Approximate, list[float], Callable[[], op.SweepResult]]:
    """(settings, calibration seconds, call): an approximate sweep whose calibration is
    timed into the list at each call. On the smoke sizes a threshold that cuts nothing
    checks approximate = exact."""
    settings = (
        op.Approximate(ssim=0.5, calibration_images=1, thresholds=(0.99,))
        if case.smoke
        else APPROXIMATE
    )
    calibration: list[float] = []

    def call() -> op.SweepResult:
        calibration.clear()
        with timing_calibration(calibration):
            return _sweep(workload, approximate=settings, **options)()

    return settings, calibration, call


@pytest.mark.parametrize("case", CASES)
def test_windows_approximate(benchmark: object, harness: Harness, case: Case) -> None:
    workload = windows_workload(case, harness.device)
    settings, calibration, call = _approximate_call(case, workload)
    result: list[op.SweepResult] = []
    row_label = f"sweep(approximate=Approximate(ssim={settings.ssim:g}, calibration_images=1))"
    swept = _run(harness, benchmark, case, workload, "approximate",
                 f"{row_label}, calibration included", call, result,
                 note_prefix=lambda r: _against_exact(case, workload, r))  # fmt: skip
    info = benchmark.extra_info  # type: ignore[attr-defined]
    info["calibration_seconds"] = sum(calibration)
    fidelity = swept.fidelity
    if fidelity is not None:
        info.update(tau=fidelity.tau, ssim=fidelity.ssim, spearman=fidelity.spearman,
                    max_abs_error=fidelity.max_abs_error)  # fmt: skip
    _without_calibration(harness, benchmark, "approximate-calibrated", row_label, calibration)
    if case.smoke:
        assert fidelity is not None and fidelity.tau == 0.99
        dense = workload.sweep("dense")
        torch.testing.assert_close(swept.occluded, dense.occluded, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("case", "coarse"), _target_cases())
def test_windows_approximate_drill_down(
    benchmark: object, harness: Harness, case: Case, coarse: int
) -> None:
    """Drill-down for a target and approximation together (the issue's 35x target): the
    drill-down's top is chosen first, then the threshold through it, and the result's
    fidelity is what its heat map measures against exact."""
    workload = windows_workload(case, harness.device)
    refine = _target_refine(case, coarse)
    settings, calibration, call = _approximate_call(case, workload, refine=refine)
    row_label = (
        f"sweep(refine=Refine(coarse_stride={coarse}, top={refine.top:g}, ssim={refine.ssim:g}, "
        f"calibration_images=1), approximate=Approximate(ssim={settings.ssim:g}, "
        "calibration_images=1))"
    )
    swept = _calibrated_rows(harness, benchmark, case, workload,
                             f"approximate-drill-down-{coarse}", row_label, call, calibration)  # fmt: skip
    computed = swept.computed
    assert computed is not None
    if case.smoke:
        exact = _EXACT[case.id]
        difference = (swept.occluded - exact.occluded).abs().amax(dim=(2, 3))
        assert float(difference[computed].max()) <= 1e-5


def _without_calibration(
    harness: Harness,
    benchmark: object,
    key: str,
    label: str,
    calibration: list[float],
) -> None:
    """A second row for the last one, leaving out the `calibration` seconds it spent
    (calibration is paid once per model and settings, then reused over a data set)."""
    row = harness.rows[-1]
    if row.seconds <= sum(calibration):
        return
    harness.record(
        benchmark,
        group=row.group,
        key=key,
        method=f"{label}, calibration left out",
        images=row.images,
        seconds=row.seconds - sum(calibration),
        ratio=row.ratio * row.seconds / (row.seconds - sum(calibration)),
        note=row.note,
    )


@pytest.mark.parametrize("case", PLAIN_CASES)
def test_windows_captum_occlusion(benchmark: object, harness: Harness, case: Case) -> None:
    """captum's Occlusion for one class (it gives one target per call; a sweep records all
    K outputs), batched at the forward limit's batch size."""
    workload = windows_workload(case, harness.device)
    window, stride, _ = _geometry(case)
    channels = case.shape[0]
    model, images = workload.model, workload.images
    batch = harness.limit(case).batch_size

    def forward(x: Tensor) -> Tensor:
        return torch.softmax(model(x), dim=1)

    def call() -> Tensor:
        with torch.inference_mode():
            return Occlusion(forward).attribute(
                images,
                sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=FILLS[0],
                target=0,
                perturbations_per_eval=batch,
            )

    result: list[Tensor] = []
    attribution = _run(harness, benchmark, case, workload, "captum",
                       f"captum Occlusion, 1 class, perturbations_per_eval={batch}",
                       call, result)  # fmt: skip
    if case.smoke:
        heat = workload.sweep("dense").heatmap(0, fill=FILLS[0])
        expected = heat[:, None].expand_as(attribution)
        torch.testing.assert_close(attribution.cpu(), expected, rtol=0, atol=1e-5)
