"""occlusion_probe.overlays: maps drawn over their inputs at rank 1, 2 and 3, read back from
the artists (Line2D, AxesImage) and compared with the tensors drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless, before anything imports pyplot

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from occlusion_probe.errors import InputTypeError, InputValueError
from occlusion_probe.overlays import (
    colour_limit,
    display_input,
    draw_curve,
    draw_image,
    draw_map,
    draw_slices,
    peak_index,
    target_axes,
)


def _covered(shape: tuple[int, ...], bare: int = 0) -> torch.Tensor:
    """All positions covered but the last `bare` along the last axis."""
    covered = torch.ones(shape, dtype=torch.bool)
    if bare:
        covered[..., -bare:] = False
    return covered


# -- display_input ----------------------------------------------------------------------------


def test_display_input_at_each_rank() -> None:
    signal = torch.randn(3, 10)
    np.testing.assert_array_equal(display_input(signal, (10,)), signal.double().numpy())
    np.testing.assert_array_equal(display_input(signal[0], (10,)), signal[:1].double().numpy())
    image = torch.rand(3, 4, 5) * 4 - 2
    shown = display_input(image, (4, 5))
    low, high = image.min(), image.max()
    expected = ((image - low) / (high - low)).permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    gray = display_input(image[:1], (4, 5))
    assert gray.shape == (4, 5) and gray.min() == 0.0 and gray.max() == 1.0
    volume = torch.arange(60.0).reshape(3, 4, 5)
    # one gray scale over the whole volume, so that its slices compare
    np.testing.assert_allclose(display_input(volume, (3, 4, 5)), volume.numpy() / 59.0)
    np.testing.assert_allclose(display_input(volume[None], (3, 4, 5)), volume.numpy() / 59.0)
    flat = display_input(torch.full((2, 2), 7.0), (2, 2))
    np.testing.assert_array_equal(flat, np.zeros((2, 2)))  # a constant image is drawn black


def test_display_input_errors() -> None:
    with pytest.raises(InputTypeError, match=r"image: expected a Tensor of real numbers, shape"):
        display_input(np.zeros((4, 4)), (4, 4))
    with pytest.raises(InputTypeError, match=r"shape \(C, L\) or \(L,\), got Tensor"):
        display_input(torch.zeros(4, dtype=torch.complex64), (4,))
    with pytest.raises(InputTypeError, match="image: expected a Tensor of real numbers"):
        display_input(torch.zeros(4, 4, dtype=torch.bool), (4, 4))
    with pytest.raises(InputValueError, match=r"image: expected shape \(C, L\) or \(L,\), got"):
        display_input(torch.zeros(1, 2, 8), (8,))
    with pytest.raises(
        InputValueError, match=r"image: expected shape \(H, W\), \(1, H, W\) or \(3, H, W\)"
    ):
        display_input(torch.zeros(2, 4, 4), (4, 4))
    with pytest.raises(
        InputValueError, match=r"pass image\[c\] for channel c\), got \(4, 2, 3, 3\)"
    ):
        display_input(torch.zeros(4, 2, 3, 3), (2, 3, 3))
    with pytest.raises(InputValueError, match=r"image: expected shape \(D, H, W\)"):
        display_input(torch.zeros(3, 3), (2, 3, 3))
    with pytest.raises(
        InputValueError, match=r"image: expected spatial size \(2, 3, 3\) to match the regions"
    ):
        display_input(torch.zeros(2, 3, 4), (2, 3, 3))
    with pytest.raises(InputValueError, match=r"spatial size \(8,\) to match the regions, got"):
        display_input(torch.zeros(2, 9), (8,))


def test_display_input_refuses_pictures_it_could_not_draw() -> None:
    volume = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0))
    volume[1, 2, 0] = float("nan")
    with pytest.raises(
        InputValueError, match=r"^image: expected finite values to draw, got NaN or inf at 1 of 18"
    ):
        display_input(volume, (2, 3, 3))
    with pytest.raises(InputValueError, match=r"^image: expected finite values to draw"):
        display_input(torch.tensor([0.0, float("inf"), 1.0]), (3,))
    with pytest.raises(InputValueError, match=r"^image: got a tensor on the meta device"):
        display_input(torch.zeros(4, 4, device="meta"), (4, 4))
    with pytest.raises(InputTypeError, match=r"^image: expected a dense \(strided\) tensor"):
        display_input(torch.zeros(4, 4).to_sparse(), (4, 4))
    # finite pictures draw as before: a volume min-max normalised as a whole
    volume[1, 2, 0] = 0.5
    drawn = display_input(volume, (2, 3, 3))
    wide = volume.double()
    expected = ((wide - wide.min()) / (wide.max() - wide.min())).numpy()
    np.testing.assert_allclose(drawn, expected, rtol=0, atol=1e-12)


# -- colour_limit and peak_index --------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6) | st.just(float("nan")), min_size=1, max_size=12))
def test_colour_limit_is_the_largest_finite_magnitude(values: list[float]) -> None:
    finite = [abs(v) for v in values if np.isfinite(v)]
    largest = max(finite, default=0.0)
    expected = largest if largest > 0 else 1.0
    assert colour_limit(torch.tensor(values, dtype=torch.float64)) == expected


def test_colour_limit_scale_and_bad_scales() -> None:
    assert colour_limit(torch.ones(3), scale=0.5) == 0.5
    assert colour_limit(torch.ones(3), scale=np.float32(2.0)) == 2.0
    assert colour_limit(torch.ones(3), scale=3) == 3.0
    for bad in (True, "1", [1.0], torch.tensor(1.0)):
        with pytest.raises(InputTypeError, match="scale: expected None or a positive number"):
            colour_limit(torch.ones(3), scale=bad)
    for bad_value in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputValueError, match="scale: expected a finite number > 0"):
            colour_limit(torch.ones(3), scale=bad_value)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=3).flatmap(
        lambda shape: st.tuples(
            st.just(tuple(shape)),
            st.lists(
                st.sampled_from([-1.0, 0.0, 0.5, 2.0, float("nan")]),
                min_size=int(np.prod(shape)),
                max_size=int(np.prod(shape)),
            ),
            st.lists(st.booleans(), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))),
        )
    )
)
def test_peak_index_equals_a_plain_loop(
    case: tuple[tuple[int, ...], list[float], list[bool]],
) -> None:
    shape, values, flags = case
    heat = torch.tensor(values, dtype=torch.float64).reshape(shape)
    covered = torch.tensor(flags).reshape(shape)
    best: tuple[int, ...] = (0,) * len(shape)
    best_value = -np.inf
    for index in itertools.product(*(range(s) for s in shape)):  # row-major: ties keep the first
        value = float(heat[index])
        if covered[index] and np.isfinite(value) and value > best_value:
            best, best_value = index, value
    assert peak_index(heat, covered) == best


# -- rank 1 -----------------------------------------------------------------------------------


def test_draw_curve_reads_back_the_signal_and_the_map() -> None:
    signal = np.random.default_rng(0).normal(size=(3, 16))
    heat = torch.linspace(-0.5, 1.0, 16)
    covered = _covered((16,), bare=2)
    figure = Figure()
    axes = figure.add_subplot()
    twin = draw_curve(axes, heat, covered, signal, 2.0, label="drop of logit")
    drawn = axes.get_lines()
    assert len(drawn) == 3  # the channels, thin
    for line, channel in zip(drawn, signal, strict=True):
        np.testing.assert_array_equal(line.get_ydata(), channel)
        assert line.get_linewidth() < 1.0
    curve = twin.get_lines()[0]
    expected = np.where(covered.numpy(), heat.double().numpy(), np.nan)
    np.testing.assert_array_equal(curve.get_xdata(), np.arange(16))
    np.testing.assert_array_equal(curve.get_ydata(), expected)  # NaN (a gap) where bare
    assert twin.get_ylim() == (-2.0, 2.0) and twin.get_ylabel() == "drop of logit"
    fills = [c for c in twin.collections if isinstance(c, PolyCollection)]
    assert len(fills) == 2  # above 0 (red) and below 0 (blue)
    assert axes.get_xlabel() == "sample" and axes.get_ylabel() == "signal (3 channels)"


# -- rank 2 -----------------------------------------------------------------------------------


def test_draw_image_reads_back_the_map() -> None:
    heat = torch.randn(6, 7, dtype=torch.float64)
    covered = _covered((6, 7), bare=1)
    display = display_input(torch.rand(3, 6, 7), (6, 7))
    figure = Figure()
    axes = figure.add_subplot()
    painted = draw_image(axes, heat, covered, display, 1.5)
    background, overlay = axes.get_images()
    assert overlay is painted
    np.testing.assert_array_equal(background.get_array(), display)
    np.testing.assert_array_equal(np.ma.getdata(overlay.get_array()), heat.numpy())
    np.testing.assert_array_equal(np.ma.getmaskarray(overlay.get_array()), ~covered.numpy())
    assert (painted.norm.vmin, painted.norm.vmax) == (-1.5, 1.5)


# -- rank 3 -----------------------------------------------------------------------------------


def test_draw_slices_reads_back_the_three_slices(tmp_path: Path) -> None:
    heat = torch.randn(4, 5, 6, dtype=torch.float64)
    covered = _covered((4, 5, 6), bare=1)
    volume = display_input(torch.rand(1, 4, 5, 6), (4, 5, 6))
    figure = Figure(layout="constrained")
    axes = list(figure.subplots(1, 3))
    painted = draw_slices(axes, heat, covered, volume, 0.75, (2, 1, 3))
    cuts = [
        (2, slice(None), slice(None)),
        (slice(None), 1, slice(None)),
        (slice(None), slice(None), 3),
    ]
    for target, image, cut in zip(axes, painted, cuts, strict=True):
        background, overlay = target.get_images()
        assert overlay is image
        np.testing.assert_array_equal(background.get_array(), volume[cut])
        np.testing.assert_array_equal(np.ma.getdata(overlay.get_array()), heat.numpy()[cut])
        np.testing.assert_array_equal(
            np.ma.getmaskarray(overlay.get_array()), ~covered.numpy()[cut]
        )
        assert (image.norm.vmin, image.norm.vmax) == (-0.75, 0.75)
    assert [a.get_title() for a in axes] == ["axial, d = 2", "coronal, h = 1", "sagittal, w = 3"]
    # the cross marks the point in each slice: (w, h), (w, d), (h, d) as (x, y)
    marks = [(line.get_xdata()[0], line.get_ydata()[0]) for a in axes for line in a.get_lines()]
    assert marks == [(3, 1), (3, 2), (1, 2)]
    figure.savefig(tmp_path / "slices.png", dpi=40)


def test_draw_map_dispatches_on_the_rank_and_slices_through_the_peak() -> None:
    heat = torch.zeros(3, 4, 5)
    heat[1, 3, 2] = 2.0
    heat[2, 0, 0] = 9.0  # larger, but not covered
    covered = torch.ones(3, 4, 5, dtype=torch.bool)
    covered[2, 0, 0] = False
    figure, axes = target_axes(3, None)
    painted, at = draw_map(axes, heat, covered, torch.rand(3, 4, 5), 1.0)
    assert at == (1, 3, 2) and len(painted) == 3 and len(figure.axes) == 3
    painted, at = draw_map(axes, heat, covered, torch.rand(3, 4, 5), 1.0, at=(0, 0, 0))
    assert at == (0, 0, 0)
    figure, axes = target_axes(1, None)
    painted, at = draw_map(
        axes, torch.rand(8), torch.ones(8, dtype=torch.bool), torch.rand(2, 8), 1.0
    )
    assert painted == [] and at is None and len(figure.axes) == 2  # the signal and its twin
    figure, axes = target_axes(2, None)
    painted, at = draw_map(
        axes, torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool), torch.rand(4, 4), 1.0
    )
    assert len(painted) == 1 and at is None


def test_target_axes_by_rank() -> None:
    figure = Figure()
    one = figure.add_subplot(2, 1, 1)
    three = [figure.add_subplot(2, 3, 4 + i) for i in range(3)]
    assert target_axes(2, one) == (figure, [one])
    assert target_axes(1, one) == (figure, [one])
    assert target_axes(3, three) == (figure, three)
    assert target_axes(3, tuple(three))[1] == three
    with pytest.raises(InputTypeError, match=r"ax: a 3D map is drawn as three slices and needs"):
        target_axes(3, one)
    with pytest.raises(InputTypeError, match=r"needs a sequence of three matplotlib Axes"):
        target_axes(3, three[:2])
    with pytest.raises(InputTypeError, match="ax: expected a matplotlib Axes or None, got list"):
        target_axes(2, three)
    sub = Figure().subfigures(1, 2)[0]
    placed = sub.add_subplot()
    assert target_axes(2, placed)[0] is sub.figure
