"""Matplotlib figures of sweep results and keep-only reports.

Each function builds a ``matplotlib.figure.Figure`` directly (no pyplot: no global state, no
window, nothing is shown) or draws into the ``ax`` it is given, and returns the figure.
Save it with ``fig.savefig("curves.png")``.

- `class_curves`: the paper's Figs 4-9, mean class output against the occluded region, one
  line per fill, optionally with bootstrap confidence bands;
- `heatmap`: the output drop of each region (one image's, or the class mean) painted over
  the image, labelled with region ids and ranks;
- `pixel_heatmap`: a per-position heat map (`SweepResult.heatmap` of one image, or the
  class-mean `class_heatmap`) over the image, for overlapping sliding windows;
- `compare_fills`: one `pixel_heatmap` panel per fill, all on one colour scale;
- `confusion`: a keep-only confusion matrix (rows = true class, row-normalised percent);
- `perturbation_curve`: keep and remove curves, ranked orders with their area shaded and
  random orders with their band, keep-only results marked.

The heat maps (defined in `occlusion_probe.plot_maps`) follow the regions' rank: a curve
under a 1D signal, the map over a 2D image, three orthogonal slices through a 3D map's peak;
``scale=`` gives several figures one colour scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from .errors import InputTypeError, InputValueError, describe
from .plot_maps import compare_fills, heatmap, output_label, pixel_heatmap, readings_of
from .results import ClassReadings, PerturbationCurve, SweepResult
from .selection import check_bool, class_index, class_label

if TYPE_CHECKING:
    from .results import ConfusionReport

__all__ = [
    "class_curves",
    "compare_fills",
    "confusion",
    "heatmap",
    "perturbation_curve",
    "pixel_heatmap",
]

# Above this many regions, tick labels are thinned so that they stay readable.
_MAX_TICK_LABELS = 24


def _target_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        figure = Figure(figsize=figsize, layout="constrained")
        return figure, figure.add_subplot()
    if not isinstance(ax, Axes):
        raise InputTypeError(f"ax: expected a matplotlib Axes or None, got {describe(ax)}")
    parent = ax.figure
    # A subfigure's axes still belong to one root figure, which is what callers save.
    root = parent.figure if isinstance(parent, SubFigure) else parent
    return root, ax


def _selection_label(result: ClassReadings, correct_only: bool) -> str:
    if isinstance(result, SweepResult) and result.labels is None:
        return "images (all, unlabelled)"
    if correct_only:
        return "correctly classified images"
    return "images of this class"


def class_curves(
    result: ClassReadings,
    cls: object,
    *,
    correct_only: bool = True,
    bands: bool = False,
    ax: Axes | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Figure:
    """Mean output of class `cls` against the occluded region, one line per fill (Figs 4-9).

    The x axis lists the region ids (1..16 for the paper's 4x4 grid), the y axis the mean
    output of class `cls` over the selected images (those of class `cls`, correctly
    classified when `correct_only`), with that region set to each fill. A dashed horizontal
    line marks the mean unoccluded output of the same images; the title names the class and
    the image count. With `bands`, each line gets a shaded 95 % percentile bootstrap band
    (`SweepResult.curve_bands` with `n_resamples` and `seed`).

    Parameters
    ----------
    result : SweepResult or ClassMeanResult
        The sweep to plot.
    cls : int, numpy integer, 0-d integer Tensor or str
        Class index, or class name when the result has ``class_names``.
    correct_only : bool
        Use only the correctly classified images of class `cls` (see `SweepResult.selection`).
    bands : bool
        Add a 95 % percentile bootstrap band to each line (needs a `SweepResult`: the bands
        resample images).
    ax : Axes, optional
        Axes to draw into; a new figure when None.
    n_resamples : int
        Bootstrap resamples of the bands.
    seed : int
        Seed of the bootstrap resampling.

    Returns
    -------
    Figure
        The new figure, or the one holding `ax` when given.

    Raises
    ------
    InputTypeError
        When `result` is not a result, or `ax` is neither None nor a matplotlib ``Axes``.
    InputValueError
        When `bands` is asked of a `ClassMeanResult` (it keeps no per-image outputs).
    EmptySelectionError
        When no image is selected (a class the model never gets right), as for every
        reading of a result.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> result = op.sweep(model, torch.rand(20, 1, 8, 8), op.grid(8, 8, 2, 2),
    ...                   labels=torch.arange(20) % 3, progress=False)
    >>> fig = class_curves(result, 0, correct_only=False, bands=True, n_resamples=100)
    >>> len(fig.axes[0].get_lines())  # 6 fills and the unoccluded level
    7
    """
    readings = readings_of(result)
    index = readings.class_index(cls)
    flag = check_bool("correct_only", correct_only)
    show_bands = check_bool("bands", bands)
    if show_bands and not isinstance(readings, SweepResult):
        raise InputValueError(
            "bands: bootstrap bands resample images, which a ClassMeanResult does not keep; "
            "sweep without reduce= for bands, or pass bands=False"
        )
    curves = readings.class_curves(index, correct_only=flag).cpu().numpy()  # (R, V)
    unoccluded = readings.unoccluded_mean(index, correct_only=flag)
    count = readings.selected_count(index, correct_only=flag)
    name = class_label(index, readings.class_names)
    figure, axes = _target_axes(ax, (7.0, 4.5))
    axes.set_xlabel("occluded region")
    axes.set_ylabel(f"mean {output_label(readings)} of {name}")
    axes.set_title(f"{name}: mean over {count} {_selection_label(readings, flag)}")
    positions = np.arange(len(readings.regions))
    # The fills are usually an ordered scale (0.0 .. 1.0), so a sequential colour map reads
    # better than the default colour cycle.
    colours = _sequential_colours(len(readings.fill_labels))
    if show_bands and isinstance(readings, SweepResult):
        low, high = readings.curve_bands(
            index, correct_only=flag, n_resamples=n_resamples, seed=seed
        )
        low_np, high_np = low.double().cpu().numpy(), high.double().cpu().numpy()
        for column, colour in enumerate(colours):
            axes.fill_between(
                positions,
                low_np[:, column],
                high_np[:, column],
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
    for column, (label, colour) in enumerate(zip(readings.fill_labels, colours, strict=True)):
        axes.plot(positions, curves[:, column], marker="o", markersize=3, color=colour, label=label)
    axes.axhline(unoccluded, color="black", linestyle="--", linewidth=1, label="unoccluded")
    _region_ticks(axes, readings.regions.ids)
    axes.legend(title="fill", fontsize="small", loc="best")
    axes.grid(alpha=0.3)
    return figure


def _sequential_colours(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if count == 1:
        return [cmap(0.0)]
    # Stop short of viridis' pale yellow end, which vanishes on a white background.
    return [cmap(0.9 * i / (count - 1)) for i in range(count)]


def _region_ticks(axes: Axes, ids: Sequence[int]) -> None:
    step = max(1, -(-len(ids) // _MAX_TICK_LABELS))
    shown = list(range(0, len(ids), step))
    axes.set_xticks(shown, [str(ids[i]) for i in shown])


def confusion(
    report: ConfusionReport,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """A keep-only confusion matrix: rows = true class, columns = predicted class.

    Each cell is coloured by its row-normalised percentage (``report.percent``) and shows the
    count and the percentage; the diagonal is the per-class recall. The title states the
    convention and the accuracy (and the kept regions, when the report has them).

    Parameters
    ----------
    report : ConfusionReport
        E.g. from `occlusion_probe.keep_only`.
    class_names : sequence of str, optional
        Names of the K classes; defaults to ``report.class_names``, then indices.
    ax : Axes, optional
        Axes to draw into; a new figure when None.

    Returns
    -------
    Figure
        The new figure, or the one holding `ax` when given.

    Raises
    ------
    InputValueError
        When the report's matrices are not square (K, K) of equal shape, or `class_names`
        does not hold K names.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> images, labels = torch.rand(30, 1, 8, 8), torch.arange(30) % 3
    >>> report = op.keep_only(model, images, labels, op.grid(8, 8, 2, 2), keep=[1, 2],
    ...                       progress=False)
    >>> fig = confusion(report, class_names=["a", "b", "c"])
    >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
    ('Predicted class', 'True class')
    """
    percent = np.asarray(report.percent.detach().cpu().to(torch.float64).numpy())
    counts = np.asarray(report.confusion.detach().cpu().numpy())
    if percent.ndim != 2 or percent.shape[0] != percent.shape[1] or counts.shape != percent.shape:
        raise InputValueError(
            "report: expected square confusion and percent matrices of equal shape (K, K), got "
            f"{counts.shape} and {percent.shape}"
        )
    k = percent.shape[0]
    names = class_names if class_names is not None else report.class_names
    if names is None:
        labels = [str(i) for i in range(k)]
    else:
        labels = [str(n) for n in names]
        if len(labels) != k:
            raise InputValueError(
                f"class_names: expected {k} names (one per class), got {len(labels)}"
            )

    side = max(4.0, 0.75 * k + 2.5)
    figure, axes = _target_axes(ax, (side + 1.0, side))
    image = axes.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0, interpolation="nearest")
    for row in range(k):
        for column in range(k):
            value = percent[row, column]
            axes.text(
                column,
                row,
                f"{int(counts[row, column])}\n{value:.1f}%",
                ha="center",
                va="center",
                fontsize="small",
                # Dark cells need light text to stay legible.
                color="white" if value > 60.0 else "black",
            )
    axes.set_xticks(range(k), labels, rotation=45 if max(len(s) for s in labels) > 3 else 0)
    axes.set_yticks(range(k), labels)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    title = f"rows = true class, row-normalised %\naccuracy {100.0 * float(report.accuracy):.2f} %"
    if report.kept_ids:
        title += f", kept regions {list(report.kept_ids)}"
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="% of the true class")
    return figure


def _curve_list(curves: object) -> list[PerturbationCurve]:
    given = [curves] if isinstance(curves, PerturbationCurve) else curves
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise InputTypeError(
            f"curves: expected a PerturbationCurve or a sequence of them, got {describe(curves)}"
        )
    listed = list(given)
    if not listed:
        raise InputValueError("curves: expected at least one PerturbationCurve, got none")
    bad = [describe(c) for c in listed if not isinstance(c, PerturbationCurve)]
    if bad:
        raise InputTypeError(f"curves: expected PerturbationCurve objects, got {bad[0]}")
    return listed


def _metric_label(curve: PerturbationCurve, metric: str, cls: object) -> str:
    if metric == "accuracy":
        return "accuracy"
    if metric == "recall":
        index = class_index(cls, curve.num_classes, curve.class_names)
        return f"recall of {class_label(index, curve.class_names)}"
    output = "logit" if curve.output == "logits" else f"{curve.output} output"
    tracked = (
        "the true class" if curve.target is None else class_label(curve.target, curve.class_names)
    )
    return f"mean {output} of {tracked}"


def perturbation_curve(
    curves: PerturbationCurve | Sequence[PerturbationCurve],
    *,
    metric: str = "accuracy",
    cls: object = None,
    labels: Sequence[str] | None = None,
    marks: Mapping[str, tuple[float, float]] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Perturbation curves: `metric` against the fraction of regions kept or removed.

    One panel per mode the curves hold (keep first, then remove); the x axis is k / R, so
    the area under a curve is its `PerturbationCurve.auc`. A curve with one order per image
    (a ranking) is a solid line with the area under it shaded; a curve with several
    (``order="random"``) is a dashed line, the mean of its draws, inside its band (the 2.5th
    to 97.5th percentiles of the draws). The legend gives each curve's AUC.

    Parameters
    ----------
    curves : PerturbationCurve or sequence of PerturbationCurve
        The curves to draw, e.g. ``[ranked_keep, random_keep, ranked_remove, random_remove]``.
    metric : {"accuracy", "class_output", "recall"}
        What the y axis shows (see `PerturbationCurve.values`).
    cls : int or str, optional
        The class of ``"recall"``.
    labels : sequence of str, optional
        One legend label per curve; default: the kind of order ("given", "per class",
        "per image", "random, D draws").
    marks : mapping of str to (k, value), optional
        Points to mark on the keep panel, e.g. `keep_only` results:
        ``{"Table 3: keep {10, 11}": (2, report.accuracy)}``; k is the number of regions
        kept (plotted at k / R).
    ax : Axes or sequence of Axes, optional
        One Axes per panel to draw into; a new figure when None.

    Returns
    -------
    Figure
        The new figure, or the one holding the axes given.

    Raises
    ------
    InputTypeError
        When `curves` holds something else than curves, or `ax` is not Axes.
    InputValueError
        When `curves` is empty, `labels` or `ax` do not match, `marks` are given without a
        keep curve or hold k outside [0, R], or `metric` / `cls` are unusable.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> images, labels = torch.rand(9, 1, 8, 8), torch.arange(9) % 3
    >>> regions = op.grid(8, 8, 2, 2)
    >>> curves = [op.perturbation_curve(model, images, regions, order, labels=labels,
    ...                                 mode=mode, draws=3, progress=False)
    ...           for mode in ("keep", "remove") for order in ([1, 2, 3, 4], "random")]
    >>> fig = perturbation_curve(curves, marks={"keep {1, 2}": (2, 0.5)})
    >>> [axes.get_xlabel() for axes in fig.axes]
    ['fraction of regions kept (k / 4)', 'fraction of regions removed (k / 4)']
    """
    listed = _curve_list(curves)
    if labels is not None and (isinstance(labels, str) or len(labels) != len(listed)):
        raise InputValueError(
            f"labels: expected one label per curve ({len(listed)}), got {labels!r}"
        )
    modes = [m for m in ("keep", "remove") if any(c.mode == m for c in listed)]
    if marks is not None and "keep" not in modes:
        raise InputValueError(
            "marks: keep-only points go on the keep panel, but no curve has mode='keep'"
        )
    if ax is None:
        figure = Figure(figsize=(6.0 * len(modes), 4.5), layout="constrained")
        panels = [figure.add_subplot(1, len(modes), i + 1) for i in range(len(modes))]
    else:
        given = [ax] if isinstance(ax, Axes) else ax
        if not isinstance(given, Sequence) or len(given) != len(modes):
            raise InputValueError(
                f"ax: expected {len(modes)} Axes (one per mode: {modes}), got {describe(ax)}"
            )
        figure = _target_axes(given[0], (6.0, 4.5))[0]
        panels = [_target_axes(a, (6.0, 4.5))[1] for a in given]
    for mode, axes in zip(modes, panels, strict=True):
        members = [(i, c) for i, c in enumerate(listed) if c.mode == mode]
        r = members[0][1].num_regions
        for number, (i, curve) in enumerate(members):
            x = curve.fraction.numpy()
            mean = curve.values(metric, cls=cls).mean(dim=0).numpy()
            area = curve.auc(metric, cls=cls)
            colour = f"C{number}"
            kind = curve.order.split(" (")[0].split(":")[0]
            if curve.num_draws > 1:
                low, high = curve.band(metric, cls=cls).numpy()
                name = labels[i] if labels is not None else f"{kind}, {curve.num_draws} draws"
                axes.fill_between(x, low, high, color=colour, alpha=0.25, linewidth=0)
                axes.plot(x, mean, linestyle="--", color=colour, label=f"{name} (AUC {area:.3f})")
            else:
                name = labels[i] if labels is not None else kind
                axes.fill_between(x, 0.0, mean, color=colour, alpha=0.15, linewidth=0)
                axes.plot(
                    x,
                    mean,
                    marker="o",
                    markersize=3,
                    color=colour,
                    label=f"{name} (AUC {area:.3f})",
                )
        if mode == "keep" and marks is not None:
            for j, (text, point) in enumerate(marks.items()):
                if not isinstance(point, (tuple, list)) or len(point) != 2:
                    raise InputValueError(
                        f"marks[{text!r}]: expected a pair (k, value), got {describe(point)}"
                    )
                k, value = float(point[0]), float(point[1])
                if not 0 <= k <= r:
                    raise InputValueError(f"marks[{text!r}]: expected k in [0, {r}], got {k:g}")
                axes.scatter(
                    [k / r], [value], marker="*", s=140, color=f"C{len(members) + j}",
                    edgecolors="black", zorder=5, label=f"{text}: {value:.3f}",
                )  # fmt: skip
        first = members[0][1]
        verb = "kept" if mode == "keep" else "removed"
        axes.set_xlabel(f"fraction of regions {verb} (k / {r})")
        axes.set_ylabel(_metric_label(first, metric, cls))
        axes.set_title(f"{mode}: {_metric_label(first, metric, cls)}, {first.num_images} images")
        axes.set_xlim(0.0, 1.0)
        # Keep curves climb and remove curves fall: their lower right and upper right
        # corners are where the lines are not.
        axes.legend(fontsize="small", loc="lower right" if mode == "keep" else "upper right")
        axes.grid(alpha=0.3)
    return figure
