"""occlusion_probe.plot: figures render to real images, carry the right labels, never show()."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless, before anything imports pyplot

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from occlusion_probe import (
    PerturbationCurve,
    SweepResult,
    confusion_report,
    perturbation_curve,
    plot,
)
from occlusion_probe.collect import ClassMeanResult
from occlusion_probe.errors import EmptySelectionError, InputTypeError, InputValueError
from occlusion_probe.regions import Regions, grid

FILLS = ("0.0", "0.2", "0.4", "0.6", "0.8", "1.0")
NAMES = ("An", "Di", "Fe", "Ha", "Sa", "Su", "Ne")


def _result(n: int = 40, seed: int = 0) -> SweepResult:
    """7 classes on a 4x4 grid of 16x16 images; occluding areas 10, 11 lowers Happiness.

    Nobody is labelled Disgust, so the Disgust selection is empty (as in the paper).
    """
    gen = torch.Generator().manual_seed(seed)
    k, regions = len(NAMES), grid(16, 16)
    labels = torch.tensor([0, 2, 3, 3, 4, 5, 6, 3])[torch.arange(n) % 8]
    logits = torch.randn(n, k, generator=gen)
    logits[torch.arange(n), labels] += 4.0
    baseline = torch.softmax(logits, dim=1)
    occluded = baseline[:, None, None, :].repeat(1, 16, 6, 1)
    occluded += 0.01 * torch.randn(occluded.shape, generator=gen)
    occluded[:, [9, 10], :, 3] -= torch.linspace(0.1, 0.4, 6)
    return SweepResult(
        baseline=baseline,
        occluded=occluded,
        labels=labels,
        regions=regions,
        fill_labels=FILLS,
        class_names=NAMES,
        image_shape=(1, 16, 16),
        output="softmax",
    )


def _render(figure: Figure, path: Path) -> np.ndarray:
    figure.savefig(path, dpi=50)
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    return pixels


def _distinct_colours(pixels: np.ndarray) -> int:
    rgb = (pixels[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    return len(np.unique(rgb, axis=0))


# -- class_curves -----------------------------------------------------------------------------


def test_class_curves_figure(tmp_path: Path) -> None:
    result = _result()
    figure = plot.class_curves(result, "Ha")
    axes = figure.axes[0]
    lines = axes.get_lines()
    assert len(lines) == len(FILLS) + 1  # one per fill and the dashed unoccluded level
    assert lines[-1].get_linestyle() == "--"
    happy = result.selection(3)
    assert lines[-1].get_ydata()[0] == pytest.approx(float(result.baseline[happy, 3].mean()))
    np.testing.assert_allclose(
        lines[0].get_ydata(), result.class_curves(3)[:, 0].numpy(), rtol=1e-6
    )
    assert [t.get_text() for t in axes.get_xticklabels()] == [str(i) for i in range(1, 17)]
    legend = axes.get_legend()
    assert legend is not None and legend.get_title().get_text() == "fill"
    assert [t.get_text() for t in legend.get_texts()] == [*FILLS, "unoccluded"]
    count = int(happy.sum())
    assert axes.get_title() == f"Ha: mean over {count} correctly classified images"
    assert "softmax" in axes.get_ylabel() and axes.get_xlabel() == "occluded region"
    assert _distinct_colours(_render(figure, tmp_path / "curves.png")) > 20


def test_class_curves_bands_and_given_axes(tmp_path: Path) -> None:
    result = _result()
    figure = Figure()
    left, right = figure.subplots(1, 2)
    returned = plot.class_curves(result, 3, bands=True, ax=right, n_resamples=100)
    assert returned is figure and not left.get_lines()
    bands = [c for c in right.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(FILLS)
    assert _distinct_colours(_render(figure, tmp_path / "bands.png")) > 20


def test_class_curves_subfigure_returns_root_figure() -> None:
    figure = Figure()
    (sub,) = figure.subfigures(1, 1, squeeze=False)[0]
    assert plot.class_curves(_result(), "Sa", correct_only=False, ax=sub.add_subplot()) is figure


def test_class_curves_without_labels_and_empty_selection(tmp_path: Path) -> None:
    result = _result()
    unlabelled = SweepResult(
        baseline=result.baseline,
        occluded=result.occluded,
        labels=None,
        regions=result.regions,
        fill_labels=FILLS,
        class_names=NAMES,
    )
    figure = plot.class_curves(unlabelled, "Ne", correct_only=False)
    assert "40 images (all, unlabelled)" in figure.axes[0].get_title()
    _render(figure, tmp_path / "unlabelled.png")
    with pytest.raises(EmptySelectionError, match="no image selected for class 'Di'"):
        plot.class_curves(result, "Di")
    with pytest.raises(EmptySelectionError, match="no image selected for class 'Di'"):
        plot.heatmap(result, "Di", torch.rand(16, 16))


def test_class_curves_bad_class() -> None:
    result = _result()
    with pytest.raises(InputValueError, match="cls: unknown class name 'Joy'"):
        plot.class_curves(result, "Joy")
    with pytest.raises(InputValueError, match=r"cls: expected a class index in \[0, 6\], got 7"):
        plot.class_curves(result, 7)
    with pytest.raises(InputTypeError, match="cls: expected a class index"):
        plot.class_curves(result, 1.5)
    with pytest.raises(InputTypeError, match="correct_only: expected a bool"):
        plot.class_curves(result, 3, correct_only="no")
    with pytest.raises(InputTypeError, match="result: expected a SweepResult or ClassMeanResult"):
        plot.class_curves(result.occluded, 3)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="ax: expected a matplotlib Axes"):
        plot.class_curves(result, 3, ax="left")  # type: ignore[arg-type]


# -- heatmap ----------------------------------------------------------------------------------


def test_heatmap_gray(tmp_path: Path) -> None:
    result = _result()
    image = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1)) * 4 - 2  # whitened
    figure = plot.heatmap(result, "Ha", image)
    axes = figure.axes[0]
    assert len(figure.axes) == 2  # the image and its colour bar
    labels = [t.get_text() for t in axes.texts]
    assert len(labels) == 16
    ranking = result.ranking("Ha")
    assert labels[9] == f"10\n#{ranking.index(10) + 1}" and ranking[:2] in ([10, 11], [11, 10])
    drawn = axes.get_images()
    assert len(drawn) == 2
    painted = np.ma.getdata(drawn[1].get_array())
    drops = result.mean_drop("Ha")
    assert painted[10, 5] == pytest.approx(drops[10])  # pixel (row 10, column 5) is in area 10
    assert "mean over fills" in axes.get_title()
    assert _distinct_colours(_render(figure, tmp_path / "heat.png")) > 50


def test_heatmap_rgb_one_fill_and_uncovered_pixels(tmp_path: Path) -> None:
    from occlusion_probe.regions import Regions

    base = _result()
    partial = Regions(grid(16, 16, 2, 2).masks[:3], (1, 2, 3))  # the bottom-right quarter is bare
    occluded = base.occluded[:, :3]
    result = SweepResult(
        baseline=base.baseline,
        occluded=occluded,
        labels=base.labels,
        regions=partial,
        fill_labels=FILLS,
        class_names=NAMES,
        image_shape=(3, 16, 16),
    )
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    figure = plot.heatmap(result, 3, image, fill=0.4)
    axes = figure.axes[0]
    background, overlay = axes.get_images()
    assert background.get_array().shape == (16, 16, 3)
    assert np.ma.getmaskarray(overlay.get_array())[12, 12]
    assert not np.ma.getmaskarray(overlay.get_array())[2, 2]
    assert "fill 0.4" in axes.get_title()
    assert _distinct_colours(_render(figure, tmp_path / "rgb.png")) > 50


def test_heatmap_errors() -> None:
    result = _result()
    with pytest.raises(InputValueError, match=r"image: expected spatial size \(16, 16\)"):
        plot.heatmap(result, "Ha", torch.rand(1, 8, 8))
    with pytest.raises(
        InputValueError, match=r"image: expected shape \(H, W\), \(1, H, W\) or \(3, H, W\)"
    ):
        plot.heatmap(result, "Ha", torch.rand(2, 16, 16))
    with pytest.raises(InputTypeError, match="image: expected a Tensor"):
        plot.heatmap(result, "Ha", np.zeros((16, 16)))  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match="cls: no image selected"):
        plot.heatmap(result, "Di", torch.rand(16, 16))
    with pytest.raises(InputValueError, match="cls: unknown class name"):
        plot.heatmap(result, "Joy", torch.rand(16, 16))


# -- pixel_heatmap ----------------------------------------------------------------------------


def _window_result() -> SweepResult:
    from reference_models import small_cnn

    import occlusion_probe as op

    model = small_cnn(in_channels=3, classes=4, size=14).eval()
    images = torch.rand(3, 3, 14, 14, generator=torch.Generator().manual_seed(4))
    windows = op.sliding_windows(14, 14, window=4, stride=3)  # row and column 13 are bare
    return op.sweep(
        model, images, windows, fills=(0.0, 0.5), labels=[0, 1, 2], progress=False,
        refine=op.Refine(coarse_stride=6, top=0.5),
    )  # fmt: skip


def test_pixel_heatmap_of_one_image_and_of_the_class_mean(tmp_path: Path) -> None:
    result = _window_result()
    image = torch.rand(3, 14, 14, generator=torch.Generator().manual_seed(5))
    figure = plot.pixel_heatmap(result, 2, image, image_index=1, fill=0.5)
    axes = figure.axes[0]
    assert len(figure.axes) == 2 and not axes.texts  # pixels only: no region labels
    _, overlay = axes.get_images()
    painted = np.ma.getdata(overlay.get_array())
    np.testing.assert_allclose(painted, result.heatmap(2, fill=0.5)[1].double().numpy(), atol=1e-7)
    assert np.ma.getmaskarray(overlay.get_array())[13, 5]
    assert not np.ma.getmaskarray(overlay.get_array())[5, 5]
    assert result.computed is not None
    share = 100 * float(result.computed[1].double().mean())
    assert axes.get_title() == (
        f"class 2: drop of softmax output, image 1\n(fill 0.5, {share:.0f} % of 16 windows computed)"
    )
    assert _distinct_colours(_render(figure, tmp_path / "pixels.png")) > 50
    mean = plot.pixel_heatmap(result, 0, image[0], correct_only=False)
    painted = np.ma.getdata(mean.axes[0].get_images()[1].get_array())
    np.testing.assert_allclose(painted, result.class_heatmap(0, correct_only=False).numpy())
    assert "mean of 1 images" in mean.axes[0].get_title()


def test_pixel_heatmap_errors() -> None:
    result = _window_result()
    image = torch.rand(14, 14)
    with pytest.raises(InputValueError, match=r"image_index: expected an index in \[0, 2\], got 3"):
        plot.pixel_heatmap(result, 0, image, image_index=3)
    with pytest.raises(InputTypeError, match="image_index: expected None or an int"):
        plot.pixel_heatmap(result, 0, image, image_index=1.0)  # type: ignore[arg-type]
    with pytest.raises(InputValueError, match=r"image: expected spatial size \(14, 14\)"):
        plot.pixel_heatmap(result, 0, torch.rand(8, 8), image_index=0)
    with pytest.raises(InputTypeError, match="result: expected a SweepResult or ClassMeanResult"):
        plot.pixel_heatmap("result", 0, image)  # type: ignore[arg-type]
    means = _class_means_of_windows()
    with pytest.raises(InputTypeError, match="image_index: only a SweepResult has per-image maps"):
        plot.pixel_heatmap(means, 0, image, image_index=0)
    figure = plot.pixel_heatmap(means, 0, image, correct_only=False)
    assert "mean of" in figure.axes[0].get_title()


def _class_means_of_windows() -> ClassMeanResult:
    import occlusion_probe as op

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(14 * 14, 3))
    return op.sweep(
        model, torch.rand(3, 1, 14, 14), op.sliding_windows(14, 14, 4, 2), fills=0.0,
        labels=[0, 1, 2], reduce="class_mean", progress=False,
    )  # fmt: skip


# -- confusion --------------------------------------------------------------------------------


def test_confusion_figure(tmp_path: Path) -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    predicted = torch.tensor([0, 0, 2, 0, 0, 2, 2, 2, 1, 0])
    report = confusion_report(labels, predicted, 4, kept_ids=(10, 11))
    figure = plot.confusion(report, class_names=["An", "Di", "Fe", "Ha"])
    axes = figure.axes[0]
    assert axes.get_xlabel() == "Predicted class" and axes.get_ylabel() == "True class"
    title = axes.get_title()
    assert "rows = true class, row-normalised %" in title
    assert "accuracy 50.00 %" in title and "kept regions [10, 11]" in title
    cells = [t.get_text() for t in axes.texts]
    assert len(cells) == 16
    assert cells[0] == "2\n66.7%" and cells[4] == "2\n100.0%" and cells[1] == "0\n0.0%"
    assert [t.get_text() for t in axes.get_yticklabels()] == ["An", "Di", "Fe", "Ha"]
    assert _distinct_colours(_render(figure, tmp_path / "confusion.png")) > 20


def test_confusion_names_default_and_mismatch() -> None:
    report = confusion_report(
        torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), 3, class_names=["x", "y", "z"]
    )
    figure = plot.confusion(report)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["x", "y", "z"]
    unnamed = confusion_report(torch.tensor([0, 1]), torch.tensor([0, 1]), 2)
    assert [t.get_text() for t in plot.confusion(unnamed).axes[0].get_xticklabels()] == ["0", "1"]
    with pytest.raises(InputValueError, match="class_names: expected 3 names"):
        plot.confusion(report, class_names=["a", "b"])


def test_plot_never_touches_pyplot() -> None:
    # Figures are built with matplotlib.figure.Figure: no pyplot state, no window, no show().
    source = Path(plot.__file__).read_text()
    assert "matplotlib.pyplot" not in source and "plt." not in source and ".show(" not in source


# -- perturbation_curve -------------------------------------------------------------------------


def _curves() -> list[PerturbationCurve]:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 3
    regions = grid(8, 8)
    return [
        perturbation_curve(
            model, images, regions, order, labels=labels, mode=mode, draws=4, progress=False
        )
        for mode in ("keep", "remove")
        for order in (list(reversed(regions.ids)), "random")
    ]


def test_perturbation_curve_figure(tmp_path: Path) -> None:
    curves = _curves()
    figure = plot.perturbation_curve(curves, marks={"keep {10, 11}": (2, 0.4)})
    assert isinstance(figure, Figure)
    keep_axes, remove_axes = figure.axes
    assert keep_axes.get_xlabel() == "fraction of regions kept (k / 16)"
    assert remove_axes.get_xlabel() == "fraction of regions removed (k / 16)"
    ranked, random = keep_axes.get_lines()
    np.testing.assert_allclose(ranked.get_ydata(), curves[0].accuracy.numpy())
    np.testing.assert_allclose(ranked.get_xdata(), np.arange(17) / 16)
    assert random.get_linestyle() == "--"
    np.testing.assert_allclose(random.get_ydata(), curves[1].accuracy.numpy())
    # the ranked area and the random band are shaded
    shaded = [c for c in keep_axes.collections if isinstance(c, PolyCollection)]
    assert len(shaded) == 2
    legend = [t.get_text() for t in keep_axes.get_legend().get_texts()]
    assert legend[0] == f"given (AUC {curves[0].auc():.3f})"
    assert legend[1].startswith("random, 4 draws (AUC")
    assert legend[2] == "keep {10, 11}: 0.400"
    assert _distinct_colours(_render(figure, tmp_path / "perturbation.png")) > 20


def test_perturbation_curve_one_panel_metrics_and_errors() -> None:
    curves = _curves()
    figure = plot.perturbation_curve(curves[2], metric="class_output")
    assert len(figure.axes) == 1
    assert figure.axes[0].get_ylabel() == "mean softmax output of the true class"
    given = Figure().subplots(1, 2)
    figure = plot.perturbation_curve(curves, metric="recall", cls=1, ax=list(given))
    assert figure.axes[0].get_ylabel() == "recall of class 1"
    with pytest.raises(InputValueError, match="marks: keep-only points go on the keep panel"):
        plot.perturbation_curve(curves[2:], marks={"x": (2, 0.5)})
    with pytest.raises(InputValueError, match=r"marks\['x'\]: expected k in \[0, 16\]"):
        plot.perturbation_curve(curves, marks={"x": (17, 0.5)})
    with pytest.raises(InputTypeError, match="curves: expected PerturbationCurve objects"):
        plot.perturbation_curve([curves[0], "random"])  # type: ignore[list-item]
    with pytest.raises(InputValueError, match="curves: expected at least one"):
        plot.perturbation_curve([])
    with pytest.raises(InputValueError, match=r"ax: expected 2 Axes"):
        plot.perturbation_curve(curves, ax=given[0])


# -- heat maps: one image's map, a shared scale, every fill on one scale ----------------------


def _region_drops_of_one_image(
    result: SweepResult, n: int, cls: int, fill: int | None
) -> np.ndarray:
    """A plain loop: each pixel gets the drop of the region holding it (a partition)."""
    height, width = result.regions.spatial_shape
    painted = np.zeros((height, width))
    for position in range(len(result.regions)):
        outputs = result.occluded[n, position, :, cls].double()
        after = outputs.mean() if fill is None else outputs[fill]
        drop = float(result.baseline[n, cls]) - float(after)
        for row in range(height):
            for col in range(width):
                if result.regions.masks[position, row, col]:
                    painted[row, col] = drop
    return painted


def test_heatmap_of_one_image_paints_that_image_s_drops() -> None:
    result = _result()
    image = torch.rand(16, 16)
    figure = plot.heatmap(result, "Ha", image, image_index=5, fill_index=2)
    axes = figure.axes[0]
    painted = np.ma.getdata(axes.get_images()[1].get_array())
    expected = _region_drops_of_one_image(result, 5, 3, 2)
    np.testing.assert_allclose(painted, expected, atol=1e-12)
    # not the class mean, which the call without image_index paints
    mean = np.ma.getdata(plot.heatmap(result, "Ha", image).axes[0].get_images()[1].get_array())
    assert not np.allclose(painted, mean)
    assert axes.get_title() == "Ha: drop of softmax output, image 5\n(fill 0.4)"
    ranks = [t.get_text().split("#")[1] for t in axes.texts]
    order = np.argsort(-expected[::4, ::4].reshape(-1), kind="stable")
    assert [int(r) for r in ranks] == list(np.argsort(order) + 1)
    over_fills = plot.heatmap(result, 3, image, image_index=0)
    np.testing.assert_allclose(
        np.ma.getdata(over_fills.axes[0].get_images()[1].get_array()),
        _region_drops_of_one_image(result, 0, 3, None),
        atol=1e-12,
    )
    assert "(mean over fills)" in over_fills.axes[0].get_title()
    numpy_index = plot.heatmap(result, 3, image, image_index=np.int64(5), fill_index=2)
    np.testing.assert_array_equal(numpy_index.axes[0].get_images()[1].get_array(), painted)


def test_heatmap_image_index_errors() -> None:
    result = _result()
    image = torch.rand(16, 16)
    with pytest.raises(
        InputValueError, match=r"image_index: expected an index in \[0, 39\], got 40"
    ):
        plot.heatmap(result, 3, image, image_index=40)
    with pytest.raises(
        InputValueError, match=r"image_index: expected an index in \[0, 39\], got -1"
    ):
        plot.heatmap(result, 3, image, image_index=-1)
    with pytest.raises(InputTypeError, match="image_index: expected None or an int, got bool True"):
        plot.heatmap(result, 3, image, image_index=True)  # type: ignore[arg-type]
    means = _class_means_of_windows()
    with pytest.raises(InputTypeError, match="image_index: only a SweepResult has per-image maps"):
        plot.heatmap(means, 0, torch.rand(14, 14), image_index=0)
    with pytest.raises(
        InputValueError, match=r"slice_at: only a 3D map is drawn as slices; these regions are 2D"
    ):
        plot.heatmap(result, 3, image, slice_at=(0, 0, 0))
    with pytest.raises(InputTypeError, match="ax: expected a matplotlib Axes or None, got list"):
        plot.heatmap(result, 3, image, ax=list(Figure().subplots(1, 3)))


def _colour_bar_limits(figure: Figure) -> tuple[float, float]:
    painted = figure.axes[0].get_images()[1]
    return float(painted.norm.vmin), float(painted.norm.vmax)


def test_a_shared_scale_makes_figures_comparable() -> None:
    result = _window_result()
    image = torch.rand(3, 14, 14)
    own = [plot.pixel_heatmap(result, 2, image, image_index=1, fill_index=v) for v in (0, 1)]
    limits = [
        float(np.abs(result.heatmap(2, fill_index=v)[1].double().numpy()).max()) for v in (0, 1)
    ]
    assert [_colour_bar_limits(f) for f in own] == [(-lim, lim) for lim in limits]
    shared = max(limits)
    for v in (0, 1):
        figure = plot.pixel_heatmap(result, 2, image, image_index=1, fill_index=v, scale=shared)
        assert _colour_bar_limits(figure) == (-shared, shared)
        assert figure.axes[1].get_ylim() == pytest.approx((-shared, shared))  # the colour bar
    figure = plot.heatmap(_result(), "Ha", torch.rand(16, 16), scale=0.5)
    assert _colour_bar_limits(figure) == (-0.5, 0.5)
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(InputValueError, match="scale: expected a finite number > 0"):
            plot.pixel_heatmap(result, 2, image, scale=bad, correct_only=False)
    with pytest.raises(InputTypeError, match="scale: expected None or a positive number"):
        plot.heatmap(_result(), "Ha", torch.rand(16, 16), scale="auto")  # type: ignore[arg-type]


def test_compare_fills_draws_every_fill_on_one_scale(tmp_path: Path) -> None:
    result = _window_result()
    image = torch.rand(3, 14, 14)
    figure = plot.compare_fills(result, 1, image, image_index=2)
    panels = figure.axes[:2]
    assert len(figure.axes) == 3  # two fills and one colour bar
    maps = [result.heatmap(1, fill_index=v)[2].double().numpy() for v in (0, 1)]
    limit = max(float(np.abs(m).max()) for m in maps)
    for axes, label, expected in zip(panels, ("0.0", "0.5"), maps, strict=True):
        overlay = axes.get_images()[1]
        np.testing.assert_allclose(np.ma.getdata(overlay.get_array()), expected, atol=1e-7)
        assert (overlay.norm.vmin, overlay.norm.vmax) == pytest.approx((-limit, limit))
        assert axes.get_title() == f"fill {label}"
    title = figure.get_suptitle()
    assert title.startswith("class 1: drop of softmax output, image 2; one scale, +-")
    _render(figure, tmp_path / "fills.png")
    means = plot.compare_fills(result, 0, image, correct_only=False, scale=0.2)
    overlay = means.axes[1].get_images()[1]
    assert (overlay.norm.vmin, overlay.norm.vmax) == (-0.2, 0.2)
    np.testing.assert_allclose(
        np.ma.getdata(overlay.get_array()),
        result.class_heatmap(0, fill_index=1, correct_only=False).numpy(),
    )
    assert "mean of 1 images" in means.get_suptitle()  # the one image labelled 0
    with pytest.raises(InputValueError, match=r"image_index: expected an index in \[0, 2\]"):
        plot.compare_fills(result, 0, image, image_index=3)
    class_means = _class_means_of_windows()  # one fill, no per-image values
    figure = plot.compare_fills(class_means, 1, torch.rand(14, 14), correct_only=False)
    np.testing.assert_allclose(
        np.ma.getdata(figure.axes[0].get_images()[1].get_array()),
        class_means.class_heatmap(1, correct_only=False).numpy(),
    )
    assert figure.axes[0].get_title() == "fill 0.0" and len(figure.axes) == 2
    with pytest.raises(InputTypeError, match="image_index: only a SweepResult has per-image maps"):
        plot.compare_fills(class_means, 1, torch.rand(14, 14), image_index=0)


# -- heat maps of signals (1D) and volumes (3D) -----------------------------------------------


def _made_result(regions: Regions, image_shape: tuple[int, ...], n: int, seed: int) -> SweepResult:
    gen = torch.Generator().manual_seed(seed)
    baseline = torch.softmax(torch.randn(n, 3, generator=gen), dim=1)
    occluded = torch.softmax(torch.randn(n, len(regions), 2, 3, generator=gen), dim=-1)
    return SweepResult(
        baseline=baseline,
        occluded=occluded,
        labels=None,
        regions=regions,
        fill_labels=("0.0", "1.0"),
        image_shape=image_shape,
    )


def _window_mean_loop(result: SweepResult, n: int, cls: int, fill: int | None) -> np.ndarray:
    """A plain loop: each position gets the mean drop over the windows that cover it."""
    masks = result.regions.masks.reshape(len(result.regions), -1)
    total = np.zeros(masks.shape[1])
    count = np.zeros(masks.shape[1])
    for position in range(len(result.regions)):
        outputs = result.occluded[n, position, :, cls].double()
        after = float(outputs.mean() if fill is None else outputs[fill])
        for index in range(masks.shape[1]):
            if masks[position, index]:
                total[index] += float(result.baseline[n, cls]) - after
                count[index] += 1
    return (total / np.maximum(count, 1)).reshape(result.regions.spatial_shape)


def test_signal_maps_are_curves_under_the_signal(tmp_path: Path) -> None:
    import occlusion_probe as op

    result = _made_result(op.sliding_windows((64,), window=8, stride=4), (3, 64), 2, 7)
    signals = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(8))
    figure = plot.pixel_heatmap(result, 1, signals[1], image_index=1)
    axes, twin = figure.axes
    assert len(axes.get_lines()) == 3
    for line, channel in zip(axes.get_lines(), signals[1], strict=True):
        np.testing.assert_allclose(line.get_ydata(), channel.double().numpy())
    (curve,) = twin.get_lines()[:1]
    expected = _window_mean_loop(result, 1, 1, None)
    np.testing.assert_allclose(curve.get_ydata(), expected, atol=1e-6)
    np.testing.assert_allclose(result.heatmap(1)[1].double().numpy(), expected, atol=1e-6)
    limit = float(np.abs(expected).max())
    assert twin.get_ylim() == pytest.approx((-limit, limit))
    assert (
        axes.get_title()
        == "class 1: drop of softmax output, image 1\n(mean over fills, 15 windows)"
    )
    assert twin.get_ylabel() == "drop of softmax output"
    _render(figure, tmp_path / "signal.png")

    regions = plot.heatmap(result, 2, signals[0], image_index=0, fill=1.0, scale=0.5)
    axes, twin = regions.axes
    np.testing.assert_allclose(
        twin.get_lines()[0].get_ydata(), _window_mean_loop(result, 0, 2, 1), atol=1e-6
    )
    assert twin.get_ylim() == (-0.5, 0.5)
    (top,) = axes.child_axes  # the region labels: a top x axis over the signal
    drops = [
        float(result.baseline[0, 2] - result.occluded[0, r, 1, 2])
        for r in range(len(result.regions))
    ]
    ranks = np.argsort(np.argsort(-np.array(drops), kind="stable")) + 1
    labels = [t.get_text() for t in top.get_xticklabels()]
    assert labels == [f"{r + 1}\n#{ranks[r]}" for r in range(15)]
    np.testing.assert_allclose(top.get_xticks(), 3.5 + 4 * np.arange(15))  # window centres
    mean = plot.heatmap(result, 2, signals[0], correct_only=False)
    np.testing.assert_allclose(
        mean.axes[1].get_lines()[0].get_ydata(),
        result.class_heatmap(2, correct_only=False).numpy(),
        atol=1e-6,
    )
    fills = plot.compare_fills(result, 0, signals[0], image_index=0)
    rows = [a for a in fills.axes if a.get_title()]
    assert [a.get_title() for a in rows] == ["fill 0.0", "fill 1.0"]
    twins = [a for a in fills.axes if not a.get_title()]
    assert len(twins) == 2 and len({a.get_ylim() for a in twins}) == 1  # one shared range


def _peak_loop(heat: np.ndarray) -> tuple[int, int, int]:
    best, value = (0, 0, 0), -np.inf
    for d in range(heat.shape[0]):
        for h in range(heat.shape[1]):
            for w in range(heat.shape[2]):
                if heat[d, h, w] > value:
                    best, value = (d, h, w), heat[d, h, w]
    return best


def _slices(heat: np.ndarray, at: tuple[int, int, int]) -> list[np.ndarray]:
    d, h, w = at
    return [heat[d], heat[:, h], heat[:, :, w]]


def test_volume_maps_are_three_slices_through_the_peak(tmp_path: Path) -> None:
    import occlusion_probe as op

    result = _made_result(op.grid((8, 8, 8), (2, 2, 2)), (1, 8, 8, 8), 1, 3)
    volume = torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    figure = plot.pixel_heatmap(result, 0, volume, image_index=0)
    assert len(figure.axes) == 4  # three slices and one colour bar
    heat = _window_mean_loop(result, 0, 0, None)
    peak = _peak_loop(heat)
    assert figure.get_suptitle() == (
        "class 0: drop of softmax output, image 0\n(mean over fills, 8 windows)\n"
        f"slices through the peak (d, h, w) = {peak}"
    )
    assert [a.get_title() for a in figure.axes[:3]] == [
        f"axial, d = {peak[0]}",
        f"coronal, h = {peak[1]}",
        f"sagittal, w = {peak[2]}",
    ]
    limit = float(np.abs(heat).max())
    for axes, expected in zip(figure.axes[:3], _slices(heat, peak), strict=True):
        overlay = axes.get_images()[1]
        np.testing.assert_allclose(np.ma.getdata(overlay.get_array()), expected, atol=1e-6)
        assert (overlay.norm.vmin, overlay.norm.vmax) == pytest.approx((-limit, limit))
    _render(figure, tmp_path / "volume.png")

    given = Figure().subplots(1, 3)
    drawn = plot.heatmap(result, 1, volume[0], image_index=0, slice_at=(1, 6, 2), ax=list(given))
    assert drawn is given[0].figure and not drawn.get_suptitle()
    assert given[0].get_title() == "axial, d = 1" and given[2].get_title() == "sagittal, w = 2"
    assert (
        given[1]
        .get_title()
        .endswith("slices through the peak (d, h, w) = (1, 6, 2)\ncoronal, h = 6")
    )
    regions = _window_mean_loop(result, 0, 1, None)
    for axes, expected in zip(given, _slices(regions, (1, 6, 2)), strict=True):
        np.testing.assert_allclose(
            np.ma.getdata(axes.get_images()[1].get_array()), expected, atol=1e-6
        )

    fills = plot.compare_fills(result, 2, volume, image_index=0)
    assert len(fills.axes) == 7  # two rows of three slices, one colour bar
    mean_peak = _peak_loop(_window_mean_loop(result, 0, 2, None))
    titles = [a.get_title() for a in fills.axes[:6]]
    assert titles[0] == f"fill 0.0: axial, d = {mean_peak[0]}"
    assert titles[3] == f"fill 1.0: axial, d = {mean_peak[0]}"
    assert titles[4] == f"coronal, h = {mean_peak[1]}"
    norms = {(i.norm.vmin, i.norm.vmax) for a in fills.axes[:6] for i in a.get_images()[1:]}
    assert len(norms) == 1
    for row, fill in enumerate((0, 1)):
        heat = _window_mean_loop(result, 0, 2, fill)
        for axes, expected in zip(
            fills.axes[3 * row : 3 * row + 3], _slices(heat, mean_peak), strict=True
        ):
            np.testing.assert_allclose(
                np.ma.getdata(axes.get_images()[1].get_array()), expected, atol=1e-6
            )


def test_volume_map_errors() -> None:
    import occlusion_probe as op

    result = _made_result(op.grid((8, 8, 8), (2, 2, 2)), (1, 8, 8, 8), 1, 3)
    volume = torch.rand(8, 8, 8)
    with pytest.raises(InputTypeError, match=r"slice_at: expected None or three ints \(d, h, w\)"):
        plot.pixel_heatmap(result, 0, volume, slice_at=(1, 2), correct_only=False)
    with pytest.raises(InputTypeError, match=r"slice_at: expected None or three ints"):
        plot.pixel_heatmap(result, 0, volume, slice_at=(1.0, 2, 3), correct_only=False)
    with pytest.raises(
        InputValueError,
        match=r"slice_at: expected h in \[0, 7\] for a volume of shape \(8, 8, 8\), got \(1, 8, 0\)",
    ):
        plot.pixel_heatmap(result, 0, volume, slice_at=(1, 8, 0), correct_only=False)
    with pytest.raises(InputTypeError, match="ax: a 3D map is drawn as three slices"):
        plot.heatmap(result, 0, volume, ax=Figure().add_subplot(), correct_only=False)
    with pytest.raises(InputValueError, match=r"one channel of a volume: pass image\[c\]"):
        plot.heatmap(result, 0, torch.rand(2, 8, 8, 8), correct_only=False)
    with pytest.raises(InputValueError, match=r"image: expected spatial size \(8, 8, 8\)"):
        plot.compare_fills(result, 0, torch.rand(8, 8, 4), correct_only=False)


# -- end to end: op.sweep at rank 1 and 3, then the pictures ----------------------------------


def _occluded_drops(
    model: torch.nn.Module, image: torch.Tensor, masks: torch.Tensor, fill: float, cls: int
) -> np.ndarray:
    """A plain loop over the regions: occlude, run the model, softmax, drop of `cls`."""
    with torch.no_grad():
        base = torch.softmax(model(image[None]), dim=1)[0, cls]
        drops = []
        for mask in masks:
            occluded = torch.where(mask, torch.full_like(image, fill), image)
            drops.append(float(base - torch.softmax(model(occluded[None]), dim=1)[0, cls]))
    return np.array(drops)


def test_signal_sweep_end_to_end(tmp_path: Path) -> None:
    import occlusion_probe as op

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(3, 4, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool1d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    signals = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1))
    windows = op.sliding_windows((64,), window=8, stride=4)
    result = op.sweep(model, signals, windows, fills=(0.0, 1.0), progress=False)
    cls = int(result.predicted[1])
    figure = plot.pixel_heatmap(result, cls, signals[1], image_index=1, fill=0.0)
    axes, twin = figure.axes
    drops = _occluded_drops(model, signals[1], windows.masks[:, None, :], 0.0, cls)
    covering = windows.masks.double().numpy()
    expected = drops @ covering / covering.sum(axis=0)
    np.testing.assert_allclose(twin.get_lines()[0].get_ydata(), expected, atol=1e-5)
    for line, channel in zip(axes.get_lines(), signals[1], strict=True):
        np.testing.assert_allclose(line.get_ydata(), channel.double().numpy())
    assert (
        axes.get_title() == f"class {cls}: drop of softmax output, image 1\n(fill 0.0, 15 windows)"
    )
    regions = plot.heatmap(result, cls, signals[1], image_index=1, fill=0.0)
    np.testing.assert_allclose(regions.axes[1].get_lines()[0].get_ydata(), expected, atol=1e-5)
    assert len(regions.axes[0].child_axes[0].get_xticklabels()) == 15
    _render(figure, tmp_path / "signal.png")


def test_volume_sweep_end_to_end(tmp_path: Path) -> None:
    import occlusion_probe as op

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    volumes = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    cells = op.grid((8, 8, 8), (2, 2, 2))
    result = op.sweep(model, volumes, cells, fills=(0.0, 1.0), progress=False)
    cls = int(result.predicted[0])
    drops = _occluded_drops(model, volumes[0], cells.masks[:, None], 0.0, cls)
    heat = np.einsum("r,rdhw->dhw", drops, cells.masks.double().numpy())
    peak = _peak_loop(heat)
    figure = plot.pixel_heatmap(result, cls, volumes[0], image_index=0, fill=0.0)
    assert len(figure.axes) == 4
    assert figure.get_suptitle().endswith(f"slices through the peak (d, h, w) = {peak}")
    assert [a.get_title() for a in figure.axes[:3]] == [
        f"axial, d = {peak[0]}",
        f"coronal, h = {peak[1]}",
        f"sagittal, w = {peak[2]}",
    ]
    for axes, expected in zip(figure.axes[:3], _slices(heat, peak), strict=True):
        np.testing.assert_allclose(
            np.ma.getdata(axes.get_images()[1].get_array()), expected, atol=1e-5
        )
    regions = plot.heatmap(result, cls, volumes[0], image_index=0, fill=0.0)
    for axes, expected in zip(regions.axes[:3], _slices(heat, peak), strict=True):
        np.testing.assert_allclose(
            np.ma.getdata(axes.get_images()[1].get_array()), expected, atol=1e-5
        )
    _render(figure, tmp_path / "volume.png")
