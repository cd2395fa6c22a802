"""SSIM, Spearman and max-error fidelity of approximate outputs against exact ones."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

import occlusion_probe as op
from occlusion_probe import InputTypeError, InputValueError
from occlusion_probe.fidelity import Fidelity, heat_map_r2, measure_fidelity, ssim


def _hand_ssim(x: np.ndarray, y: np.ndarray, side: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. 2004 written out: Gaussian-weighted statistics window by window."""
    coords = np.arange(side) - (side - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    span = y.max() - y.min()
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    values = []
    for i in range(x.shape[0] - side + 1):
        for j in range(x.shape[1] - side + 1):
            a, b = x[i : i + side, j : j + side], y[i : i + side, j : j + side]
            mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
            var_a = (weights * (a - mu_a) ** 2).sum()
            var_b = (weights * (b - mu_b) ** 2).sum()
            cov = (weights * (a - mu_a) * (b - mu_b)).sum()
            values.append(
                (2 * mu_a * mu_b + c1)
                * (2 * cov + c2)
                / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            )
    return float(np.mean(values))


def test_ssim_matches_a_hand_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(20, 17, generator=generator, dtype=torch.float64)
    noisy = reference + 0.2 * torch.randn(20, 17, generator=generator, dtype=torch.float64)
    expected = _hand_ssim(noisy.numpy(), reference.numpy())
    assert float(ssim(noisy, reference)) == pytest.approx(expected, rel=1e-10)
    assert 0.0 < expected < 0.9
    assert float(ssim(reference, reference)) == pytest.approx(1.0)
    # Batched over leading dims, one value per pair.
    both = ssim(torch.stack([noisy, reference]), torch.stack([reference, reference]))
    assert both.shape == (2,) and float(both[1]) == pytest.approx(1.0)


def test_ssim_small_maps_constant_reference_and_errors() -> None:
    small = torch.rand(6, 9, generator=torch.Generator().manual_seed(1))
    assert float(ssim(small, small)) == pytest.approx(1.0)  # window shrinks to 5 x 5
    constant = torch.zeros(12, 12)
    assert float(ssim(constant, constant)) == pytest.approx(1.0)  # data range 1, not 0
    assert float(ssim(constant + 0.5, constant)) < 1.0
    assert float(ssim(small * 2, small, data_range=1.0)) < 1.0
    with pytest.raises(InputValueError, match="image, reference: expected equal shapes"):
        ssim(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(InputTypeError, match="image, reference: expected Tensors"):
        ssim(np.zeros((4, 4)), torch.zeros(4, 4))  # type: ignore[arg-type]


def test_measure_fidelity() -> None:
    regions = op.sliding_windows(12, 12, window=4, stride=2)  # 25 windows
    generator = torch.Generator().manual_seed(2)
    baseline = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
    exact = torch.rand(2, 25, 2, 3, generator=generator)
    same = measure_fidelity(regions, baseline, exact, exact.clone(), 0.5, 0.9)
    assert (same.ssim, same.max_abs_error, same.tau, same.calibration_images) == (1.0, 0.0, 0.5, 2)
    assert same.spearman == pytest.approx(1.0)
    noisy = exact + 0.05 * torch.randn(exact.shape, generator=generator)
    found = measure_fidelity(regions, baseline, exact, noisy, 0.3, 0.9)
    assert found.max_abs_error == pytest.approx(float((noisy - exact).abs().max()))
    # Spearman over the regions' drops of the predicted class (0, then 1), per image and fill.
    rhos = [
        scipy_stats.spearmanr(
            (baseline[n, c] - noisy[n, :, v, c]).numpy(),
            (baseline[n, c] - exact[n, :, v, c]).numpy(),
        ).statistic
        for n, c in ((0, 0), (1, 1))
        for v in range(2)
    ]
    assert found.spearman == pytest.approx(float(np.mean(rhos)))
    heat = regions.pixel_mean((baseline[0, 0] - exact[0, :, 1, 0]).double())
    heat_noisy = regions.pixel_mean((baseline[0, 0] - noisy[0, :, 1, 0]).double())
    assert found.ssim < 1.0 and float(ssim(heat_noisy, heat)) < 1.0
    constant = torch.zeros(2, 25, 2, 3)
    flat = measure_fidelity(regions, baseline, constant, constant + 0.1, 0.3, 0.9)
    assert math.isnan(flat.spearman)  # equal drops everywhere: no ranking to compare


@pytest.mark.parametrize("lead", [(0,), (1,), (2,), (2, 3)])
def test_heat_map_r2_matches_numpy(lead: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(3)
    a = torch.rand((*lead, 7, 9), generator=generator)
    b = a + 0.3 * torch.rand((*lead, 7, 9), generator=generator)
    found = heat_map_r2(b, a)
    assert found.shape == lead and found.dtype == torch.float64
    pairs = zip(b.reshape(-1, 63).double().numpy(), a.reshape(-1, 63).double().numpy(), strict=True)
    expected = [1 - ((y - x) ** 2).sum() / ((y - y.mean()) ** 2).sum() for x, y in pairs]
    torch.testing.assert_close(found.flatten(), torch.tensor(expected, dtype=torch.float64))


def test_heat_map_r2_height_offset_constant_maps_and_errors() -> None:
    a = torch.rand(6, 6, generator=torch.Generator().manual_seed(4))
    assert float(heat_map_r2(a, a)) == 1.0
    assert float(heat_map_r2(torch.full((6, 6), float(a.mean())), a)) == pytest.approx(0.0)
    assert float(heat_map_r2(a / 8, a)) < 0.9  # the right shape at the wrong height
    assert float(heat_map_r2(a + 1, a)) < 0  # or offset
    assert float(heat_map_r2(torch.ones(6, 6), torch.ones(6, 6))) == 1.0
    assert float(heat_map_r2(torch.zeros(6, 6), torch.ones(6, 6))) == 0.0
    with pytest.raises(InputValueError, match="image, reference: expected equal shapes"):
        heat_map_r2(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(InputValueError, match="image, reference: expected equal shapes"):
        heat_map_r2(torch.zeros(4), torch.zeros(4))
    with pytest.raises(InputTypeError, match="image, reference: expected Tensors"):
        heat_map_r2(torch.zeros(4, 4), [[0.0]])  # type: ignore[arg-type]


def _concentrated(shift: int = 0) -> tuple[op.Regions, torch.Tensor, torch.Tensor]:
    """(regions, baseline, occluded): a 96x96 image whose class output drops only when a
    window covers a 4x4 spot (as a classifier that found one object): sparse heat maps."""
    regions = op.sliding_windows(96, 96, window=8, stride=4)
    masks = regions.masks  # (R, 96, 96)
    spot = torch.zeros(96, 96, dtype=torch.bool)
    spot[60:64, 30 + shift : 34 + shift] = True
    covered = (masks & spot).flatten(1).sum(dim=1).double() / 16  # (R,)
    baseline = torch.tensor([[1.0, 0.0]])
    occluded = torch.stack([1.0 - covered, covered], dim=1)[None, :, None, :]  # (1, R, 1, 2)
    return regions, baseline, occluded


def test_ssim_alone_misses_a_lost_hot_spot() -> None:
    """On a concentrated heat map an approximation that lost the hot spot, moved it or
    shrank it keeps a high SSIM (the flat background matches); the R^2 says what was lost,
    and the fidelity does not reach the target."""
    regions, baseline, exact = _concentrated()
    nothing = baseline[:, None, None, :].expand_as(exact).clone()  # no drop anywhere
    lost = measure_fidelity(regions, baseline, exact, nothing, 0.1, 0.9)
    assert lost.ssim > 0.9 and lost.r2 < 0.1 and not lost.reached
    assert "BELOW the target" in lost.describe() and "R^2 " in lost.describe()
    _, _, moved = _concentrated(shift=16)
    shifted = measure_fidelity(regions, baseline, exact, moved, 0.1, 0.9)
    assert shifted.ssim > 0.9 and shifted.r2 < 0 and not shifted.reached
    weak = nothing + (exact - nothing) / 8  # the spot at 1/8 of its height
    shrunk = measure_fidelity(regions, baseline, exact, weak, 0.1, 0.9)
    assert shrunk.ssim > 0.9 and shrunk.r2 < 0.3 and not shrunk.reached
    kept = measure_fidelity(regions, baseline, exact, exact.clone(), 0.1, 0.9)
    assert kept.r2 == 1.0 and kept.reached


def test_fidelity_reached_equality_and_hash() -> None:
    assert Fidelity(0.95, 0.5, 0.0, 0.5, 1, 0.9, r2=0.92).reached
    assert not Fidelity(0.95, 0.5, 0.0, 0.5, 1, 0.9, r2=0.85).reached
    assert not Fidelity(0.85, 0.5, 0.0, 0.5, 1, 0.9, r2=0.95).reached
    # Not measured (a file written before the R^2): SSIM alone decides.
    assert Fidelity(0.95, 0.5, 0.0, 0.5, 1, 0.9).reached
    a = Fidelity(0.95, math.nan, 0.0, 0.5, 1, 0.9)
    b = Fidelity(0.95, math.nan, 0.0, 0.5, 1, 0.9)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Fidelity(0.95, math.nan, 0.0, 0.5, 1, 0.9, r2=0.9)
    assert a != "fidelity"


def _ssim_by_loop(x: np.ndarray, y: np.ndarray, side: int, sigma: float = 1.5) -> float:
    """Mean SSIM over every window position that fits, with a separable Gaussian window."""
    coords = np.arange(side) - (side - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    g /= g.sum()
    weights = g
    for _ in range(x.ndim - 1):
        weights = np.multiply.outer(weights, g)
    span = y.max() - y.min()
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    values = []
    for corner in itertools.product(*[range(size - side + 1) for size in x.shape]):
        box = tuple(slice(c, c + side) for c in corner)
        a, b = x[box], y[box]
        mx, my = (weights * a).sum(), (weights * b).sum()
        vx = (weights * a * a).sum() - mx**2
        vy = (weights * b * b).sum() - my**2
        cov = (weights * a * b).sum() - mx * my
        values.append(
            ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        )
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(30,), (12, 13), (7, 8, 9)], ids=["1d", "2d", "3d"])
def test_ssim_and_r2_at_any_rank_equal_a_loop(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    reference = torch.rand(shape, generator=generator, dtype=torch.float64)
    image = reference + 0.3 * torch.rand(shape, generator=generator, dtype=torch.float64)
    side = min(11, *shape)
    side -= 1 - side % 2
    found = float(ssim(image, reference, ndim=len(shape)))
    assert found == pytest.approx(_ssim_by_loop(image.numpy(), reference.numpy(), side), rel=1e-9)
    # a leading batch axis is kept
    both = ssim(
        torch.stack([image, reference]), torch.stack([reference, reference]), ndim=len(shape)
    )
    assert both.shape == (2,) and float(both[1]) == pytest.approx(1.0)
    r2 = float(heat_map_r2(image, reference, ndim=len(shape)))
    y, x = reference.numpy(), image.numpy()
    assert r2 == pytest.approx(1 - ((y - x) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-12)


def test_map_comparisons_check_ndim() -> None:
    a = torch.rand(4, 4)
    with pytest.raises(InputValueError, match=r"ndim: expected 1, 2 or 3 spatial axes, got 4"):
        ssim(a, a, ndim=4)
    with pytest.raises(InputTypeError, match=r"ndim: expected an int 1..3"):
        heat_map_r2(a, a, ndim=2.0)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"with 3 spatial axes, got \(4, 4\)"):
        ssim(a, a, ndim=3)


def test_map_comparisons_refuse_non_finite_maps_and_bad_parameters() -> None:
    a = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    nan = torch.full((2, 8, 8), float("nan"))
    for compare in (ssim, heat_map_r2):
        with pytest.raises(
            InputValueError, match=r"^image: expected finite values, got NaN or inf"
        ):
            compare(nan, a)
        with pytest.raises(InputValueError, match=r"^reference: expected finite values"):
            compare(a, torch.full((2, 8, 8), float("inf")))
        with pytest.raises(InputTypeError, match=r"^image: expected a real-valued map"):
            compare(a.to(torch.complex64), a.to(torch.complex64))
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(InputValueError, match=r"^data_range: expected a finite number > 0"):
            ssim(a, a, data_range=value)
        with pytest.raises(InputValueError, match=r"^sigma: expected a finite number > 0"):
            ssim(a, a, sigma=value)
    with pytest.raises(InputTypeError, match=r"^data_range: expected a finite number > 0, got str"):
        ssim(a, a, data_range="x")  # type: ignore[arg-type]
    for window in (0, -3):
        with pytest.raises(InputValueError, match=r"^window: expected a positive int"):
            ssim(a, a, window=window)
    with pytest.raises(InputTypeError, match=r"^window: expected a positive int, got float 2.5"):
        ssim(a, a, window=2.5)  # type: ignore[arg-type]
    # the checks leave valid calls as they were: numpy ints and floats are numbers
    assert ssim(a, a, window=np.int64(7), sigma=np.float32(1.5), data_range=1).tolist() == [
        1.0,
        1.0,
    ]
