"""Approximate sweeps (approximate=...): a projective-field threshold chosen for a target SSIM,
with the fidelity measured against exact on the calibration images."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import occlusion_probe as op
from occlusion_probe import Approximate, Fidelity, InputTypeError, InputValueError
from occlusion_probe.approximate import DEFAULT_THRESHOLDS, check_approximate
from occlusion_probe.fidelity import ExactReference, measure_fidelity

FILLS = (0.0, 0.5)


def _deep() -> nn.Module:
    """Four 3x3 convs at 24x24: projective fields grow past the threshold's caps."""
    torch.manual_seed(2)
    layers: list[nn.Module] = []
    channels = 3
    for width in (6, 6, 8, 8):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 4)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # larger weights: occlusions change the logits visibly
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                layer.weight.mul_(2.0)
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _deep()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def windows() -> op.Regions:
    return op.sliding_windows(24, 24, window=6, stride=3)


@pytest.fixture(scope="module")
def exact(model: nn.Module, images: torch.Tensor, windows: op.Regions) -> op.SweepResult:
    return op.sweep(model, images, windows, FILLS, output="logits", engine="dense", progress=False)


def test_threshold_large_enough_equals_exact(
    model: nn.Module, images: torch.Tensor, windows: op.Regions, exact: op.SweepResult
) -> None:
    # A cap of 0.95 of every map never cuts a 6-pixel window's field grown by four 3x3 convs
    # (at most 14 of 24 pixels): the approximate engine is then exact, and says so.
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False,
        approximate=Approximate(ssim=0.99, calibration_images=2, thresholds=(0.95,)),
    )  # fmt: skip
    torch.testing.assert_close(result.occluded, exact.occluded, rtol=0, atol=1e-5)
    fidelity = result.fidelity
    assert fidelity is not None
    assert fidelity.tau == 0.95 and fidelity.calibration_images == 2 and fidelity.target == 0.99
    assert fidelity.ssim == pytest.approx(1.0, abs=1e-6)
    assert fidelity.spearman == pytest.approx(1.0, abs=1e-6)
    assert fidelity.max_abs_error <= 1e-5
    assert result.engine == "incremental"
    assert result.engine_note.startswith("APPROXIMATE: projective-field threshold tau=0.95")


def test_small_threshold_is_approximate_and_measured(
    model: nn.Module, images: torch.Tensor, windows: op.Regions, exact: op.SweepResult
) -> None:
    settings = Approximate(ssim=0.2, calibration_images=2, thresholds=(0.4,))
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False, approximate=settings
    )
    fidelity = result.fidelity
    assert fidelity is not None and fidelity.tau == 0.4
    assert 0.2 <= fidelity.ssim <= 1.0 and 0.2 <= fidelity.r2 <= 1.0
    assert -1.0 <= fidelity.spearman <= 1.0
    error = float((result.occluded - exact.occluded).abs().max())
    assert error > 0.1 * float(exact.delta.abs().max())  # the cap changes outputs
    # The recorded error is measured on the calibration images (the first two) only.
    calibration_error = float((result.occluded[:2] - exact.occluded[:2]).abs().max())
    assert fidelity.max_abs_error == pytest.approx(calibration_error, rel=1e-4, abs=1e-6)
    # The unoccluded outputs are never approximated.
    torch.testing.assert_close(result.baseline, exact.baseline)


def test_smallest_threshold_meeting_the_target_is_chosen(
    model: nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    thresholds = (0.9, 0.5, 0.3, 0.15)
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False,
        approximate=Approximate(ssim=0.95, calibration_images=1, thresholds=thresholds),
    )  # fmt: skip
    # Each candidate alone: which meet the target on the first image?
    measured = {}
    for tau in thresholds:
        alone = op.sweep(
            model, images[:1], windows, FILLS, output="logits", progress=False,
            approximate=Approximate(ssim=1e-9, calibration_images=1, thresholds=(tau,)),
        )  # fmt: skip
        # None: even a target of 1e-9 was missed (an R^2 below 0).
        measured[tau] = alone.fidelity
    passing = []
    for tau in thresholds:  # from the largest down, stopping at the first miss
        found = measured[tau]
        if found is None or found.ssim < 0.95 or found.r2 < 0.95:
            break
        passing.append(tau)
    if passing:
        assert result.fidelity is not None and result.fidelity.tau == passing[-1]
        chosen = measured[passing[-1]]
        assert chosen is not None and result.fidelity.ssim == pytest.approx(chosen.ssim)
    else:
        assert result.fidelity is None


def test_calibration_needs_the_r2_as_well_as_the_ssim(
    monkeypatch: pytest.MonkeyPatch, model: nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    """A setting whose heat maps keep the SSIM but lose the R^2 (as a map of zeros against
    a concentrated one: test_fidelity.py) does not reach the target, for a threshold and
    for a drill-down's top."""
    real = ExactReference.measure

    def hot_spot_lost(self: ExactReference, *args: object, **kwargs: object) -> Fidelity:
        return dataclasses.replace(real(self, *args, **kwargs), ssim=1.0, r2=0.0)  # type: ignore[arg-type]

    monkeypatch.setattr(ExactReference, "measure", hot_spot_lost)
    common = {"output": "logits", "progress": False}
    settings = Approximate(ssim=0.9, calibration_images=1, thresholds=(0.5,))
    result = op.sweep(model, images, windows, FILLS, approximate=settings, **common)
    assert result.fidelity is None
    assert "no threshold reached heat-map SSIM and R^2 0.9" in result.engine_note
    refine = op.Refine(coarse_stride=6, top=0.25, ssim=0.9, calibration_images=1)
    drilled = op.sweep(model, images, windows, FILLS, refine=refine, **common)
    assert drilled.fidelity is not None and drilled.fidelity.top == 1.0
    assert "BELOW the target" in drilled.engine_note


def test_no_threshold_meeting_the_target_stays_exact(
    model: nn.Module, images: torch.Tensor, windows: op.Regions, exact: op.SweepResult
) -> None:
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False,
        approximate=Approximate(ssim=1.0, calibration_images=1, thresholds=(0.1,)),
    )  # fmt: skip
    assert result.fidelity is None
    assert (
        "no threshold reached heat-map SSIM and R^2 1 on the calibration images: EXACT outputs"
        in (result.engine_note)
    )
    torch.testing.assert_close(result.occluded, exact.occluded, rtol=0, atol=1e-5)


def test_approximate_with_refine(
    model: nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False,
        approximate=Approximate(ssim=0.5, calibration_images=1, thresholds=(0.95,)),
        refine=op.Refine(coarse_stride=6, top=1.0),
    )  # fmt: skip
    exact = op.sweep(model, images, windows, FILLS, output="logits", engine="dense", progress=False)
    assert result.fidelity is not None and result.computed is not None
    torch.testing.assert_close(result.occluded, exact.occluded, rtol=0, atol=1e-5)
    assert "DRILL-DOWN" in result.engine_note and "APPROXIMATE" in result.engine_note


def _own_fidelity(
    result: op.SweepResult, exact: op.SweepResult, windows: op.Regions, count: int
) -> Fidelity:
    """The fidelity of `result`'s first `count` images against the dense exact sweep."""
    assert result.fidelity is not None
    fidelity = result.fidelity
    return measure_fidelity(windows, exact.baseline[:count], exact.occluded[:count],
                            result.occluded[:count], fidelity.tau, fidelity.target)  # fmt: skip


def test_drill_down_with_threshold_reports_what_ran(
    model: nn.Module, images: torch.Tensor, windows: op.Regions, exact: op.SweepResult
) -> None:
    """With a drill-down, each threshold is tried through the drill-down, and the fidelity
    compares the result's own outputs (filled-in windows included) with exact."""
    refine = op.Refine(coarse_stride=6, top=0.25)
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False, refine=refine,
        approximate=Approximate(ssim=0.05, calibration_images=1, thresholds=(0.4,)),
    )  # fmt: skip
    fidelity = result.fidelity
    assert fidelity is not None and fidelity.tau == 0.4 and fidelity.top == 0.25
    own = _own_fidelity(result, exact, windows, 1)
    # Calibration's exact outputs are the incremental engine's, `exact` the dense engine's:
    # they differ by float rounding (about 1e-6 on these logits), and the SSIM of these
    # heat maps (a small data range) moves by a few 1e-6 with them.
    assert fidelity.ssim == pytest.approx(own.ssim, abs=2e-5)
    assert fidelity.max_abs_error == pytest.approx(own.max_abs_error, abs=1e-5)
    # The threshold alone would have measured higher: the drill-down's loss is counted too.
    alone = op.sweep(
        model, images[:1], windows, FILLS, output="logits", progress=False,
        approximate=Approximate(ssim=0.05, calibration_images=1, thresholds=(0.4,)),
    )  # fmt: skip
    assert alone.fidelity is not None and alone.fidelity.ssim > fidelity.ssim + 0.05
    note = result.engine_note
    assert note.startswith("DRILL-DOWN")
    assert (
        "APPROXIMATE: drill-down computing the top 0.25 of each image's coarse cells with " in note
    )
    assert "projective-field threshold tau=0.4 (target 0.05 for heat-map SSIM and R^2)" in note


def test_drill_down_that_no_threshold_helps_is_still_measured(
    model: nn.Module, images: torch.Tensor, windows: op.Regions, exact: op.SweepResult
) -> None:
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False,
        refine=op.Refine(coarse_stride=6, top=0.25),
        approximate=Approximate(ssim=0.999, calibration_images=2, thresholds=(0.1,)),
    )  # fmt: skip
    fidelity = result.fidelity
    assert fidelity is not None and fidelity.tau == 1.0 and fidelity.top == 0.25
    own = _own_fidelity(result, exact, windows, 2)
    # Incremental against dense exact outputs: float rounding moves the SSIM a few 1e-6.
    assert fidelity.ssim == pytest.approx(own.ssim, abs=2e-5) and fidelity.ssim < 0.999
    assert (
        "no threshold reached heat-map SSIM and R^2 0.999 on the calibration images, so none was applied"
        in (result.engine_note)
    )
    assert ", BELOW the target" in result.engine_note
    # Computed windows are exact: no threshold ran.
    assert result.computed is not None
    difference = (result.occluded - exact.occluded).abs().amax(dim=(2, 3))
    assert float(difference[result.computed].max()) <= 1e-4


def test_drill_down_target_first_then_threshold(
    model: nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    """A drill-down with its own target chooses its top first (as alone), then the threshold
    is chosen through it; the fidelity is reported against the approximation's target."""
    refine = op.Refine(coarse_stride=6, top=0.25, ssim=0.3, calibration_images=1)
    alone = op.sweep(model, images, windows, FILLS, output="logits", progress=False,
                     refine=refine)  # fmt: skip
    both = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False, refine=refine,
        approximate=Approximate(ssim=0.05, calibration_images=1, thresholds=(0.4,)),
    )  # fmt: skip
    assert alone.fidelity is not None and both.fidelity is not None
    assert both.fidelity.top == alone.fidelity.top and alone.fidelity.target == 0.3
    assert both.fidelity.tau == 0.4 and both.fidelity.target == 0.05


def test_fidelity_saved_and_loaded(
    tmp_path: Path, model: nn.Module, images: torch.Tensor, windows: op.Regions
) -> None:
    result = op.sweep(
        model, images, windows, FILLS, output="logits", progress=False,
        approximate=Approximate(ssim=0.1, calibration_images=1, thresholds=(0.4,)),
    )  # fmt: skip
    loaded = op.SweepResult.load(result.save(tmp_path / "approx.npz"))
    assert loaded.fidelity == result.fidelity
    assert loaded.computed is None
    joined = op.SweepResult.concatenate([result, loaded])
    assert joined.fidelity == result.fidelity
    exact = op.sweep(model, images, windows, FILLS, output="logits", engine="dense", progress=False)
    with pytest.raises(
        InputValueError,
        match=r"parts: part 1 does not come from the same sweep as part 0: its fidelity",
    ):
        op.SweepResult.concatenate([result, exact])


def test_fidelity_round_trip_and_nan_spearman() -> None:
    fidelity = Fidelity(0.93, math.nan, 0.01, 0.25, 4, 0.9)
    back = Fidelity.from_array(fidelity.as_array())
    assert back.tau == 0.25 and back.calibration_images == 4 and math.isnan(back.spearman)
    assert "tau=0.25" in fidelity.describe() and "drill-down" not in fidelity.describe()
    assert fidelity.top is None
    drill = Fidelity(0.5, 0.7, 0.2, 1.0, 2, 0.9, top=0.125)
    assert Fidelity.from_array(drill.as_array()) == drill
    assert "drill-down computing the top 0.125" in drill.describe()
    assert "tau" not in drill.describe() and "BELOW the target" in drill.describe()


def test_approximate_errors(images: torch.Tensor, windows: op.Regions, model: nn.Module) -> None:
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 24, 4))
    with pytest.raises(InputValueError, match="approximate: needs a model the incremental engine"):
        op.sweep(flat, images, windows, approximate=0.9, progress=False)
    with pytest.raises(
        InputValueError, match='approximate: needs the incremental engine, got engine="dense"'
    ):
        op.sweep(model, images, windows, engine="dense", approximate=0.9, progress=False)
    with pytest.raises(InputValueError, match="approximate: cannot be combined with reduce="):
        op.sweep(model, images, windows, labels=[0, 1, 2], reduce="class_mean",  # type: ignore[call-overload]
                 approximate=0.9, progress=False)  # fmt: skip
    with pytest.raises(InputValueError, match=r"approximate: expected an SSIM target in \(0, 1\]"):
        op.sweep(model, images, windows, approximate=1.5, progress=False)
    with pytest.raises(InputTypeError, match="approximate: expected None, an SSIM target"):
        op.sweep(model, images, windows, approximate="fast", progress=False)  # type: ignore[arg-type]
    lambda_model = lambda x: model(x)  # noqa: E731 - a callable, not an nn.Module
    with pytest.raises(InputValueError, match=r"not an nn\.Module"):
        op.sweep(lambda_model, images, windows, approximate=0.9, progress=False)


def test_approximate_settings_validated() -> None:
    assert check_approximate(None) is None
    assert check_approximate(0.8) == Approximate(ssim=0.8)
    assert Approximate().thresholds == DEFAULT_THRESHOLDS
    assert Approximate(thresholds=(0.2, 0.5, 0.2)).thresholds == (0.5, 0.2)
    with pytest.raises(InputValueError, match=r"Approximate.ssim: expected a float in \(0, 1\]"):
        Approximate(ssim=0.0)
    with pytest.raises(InputTypeError, match=r"Approximate\.ssim"):
        Approximate(ssim="high")  # type: ignore[arg-type]
    with pytest.raises(
        InputValueError, match=r"Approximate\.calibration_images: expected a positive"
    ):
        Approximate(calibration_images=0)
    with pytest.raises(InputTypeError, match=r"Approximate\.calibration_images"):
        Approximate(calibration_images=1.5)  # type: ignore[arg-type]
    with pytest.raises(
        InputValueError, match=r"Approximate.thresholds: expected at least one float in \(0, 1\)"
    ):
        Approximate(thresholds=(1.0,))
    with pytest.raises(InputValueError, match=r"Approximate\.thresholds"):
        Approximate(thresholds=())
    with pytest.raises(InputTypeError, match=r"Approximate\.thresholds"):
        Approximate(thresholds=0.5)  # type: ignore[arg-type]


def test_capped_engine_computes_krypton_approximation() -> None:
    """The approximate outputs equal a hand-written projective-field threshold: each conv's
    changed box grown exactly, capped at tau of its map (centred, clipped), the values
    outside the cap taken from the unoccluded image's map."""
    from occlusion_probe.engines.plan import cap_box

    torch.manual_seed(3)
    conv1, conv2 = nn.Conv2d(2, 3, 5, padding=2), nn.Conv2d(3, 3, 5, padding=2)
    linear = nn.Linear(3 * 16 * 16, 4)
    model = nn.Sequential(conv1, nn.ReLU(), conv2, nn.Flatten(), linear).eval()
    images = torch.rand(2, 2, 16, 16, generator=torch.Generator().manual_seed(6))
    windows = op.sliding_windows(16, 16, window=4, stride=4)
    tau = 0.4  # caps at ceil(6.4) = 7 of 16 rows and columns
    settings = Approximate(ssim=1e-9, calibration_images=1, thresholds=(tau,))
    result = op.sweep(model, images, windows, 0.0, output="logits", progress=False,
                      approximate=settings)  # fmt: skip
    assert result.fidelity is not None and result.fidelity.tau == tau

    def grow(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        top, bottom, left, right = box  # a 5x5 conv with padding 2 on a 16x16 map
        return max(0, top - 2), min(16, bottom + 2), max(0, left - 2), min(16, right + 2)

    with torch.no_grad():
        for n in range(2):
            clean1 = conv1(images[n : n + 1])
            clean2 = conv2(torch.relu(clean1))
            for r in range(len(windows)):
                occluded = torch.where(windows.masks[r], 0.0, images[n : n + 1])
                rows = torch.nonzero(windows.masks[r].any(1)).flatten()
                cols = torch.nonzero(windows.masks[r].any(0)).flatten()
                box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
                box1 = cap_box(grow(box), (16, 16), tau)
                mixed1 = clean1.clone()
                t, b, lo, hi = box1
                mixed1[..., t:b, lo:hi] = conv1(occluded)[..., t:b, lo:hi]
                box2 = cap_box(grow(box1), (16, 16), tau)
                mixed2 = clean2.clone()
                t, b, lo, hi = box2
                mixed2[..., t:b, lo:hi] = conv2(torch.relu(mixed1))[..., t:b, lo:hi]
                expected = linear(mixed2.flatten(1))[0]
                torch.testing.assert_close(result.occluded[n, r, 0], expected, rtol=0, atol=1e-5)
