"""Heat-map figures of sweep results at every rank: `heatmap`, `pixel_heatmap`, `compare_fills`.

Re-exported by `occlusion_probe.plot`, where they are documented for users. Each reads one
map from a result (one image's with ``image_index=``, else the class mean over the selected
images) and draws it over the input with `occlusion_probe.overlays`, as the regions' rank
asks: a curve under a signal (1D), a painted image (2D), three orthogonal slices through the
map's peak (3D). ``scale=`` fixes the symmetric colour scale so several figures compare;
`compare_fills` draws one panel per fill on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe
from .overlays import colour_limit, display_input, draw_map, peak_index, target_axes
from .results import ClassReadings, SweepResult
from .selection import check_bool, class_label, fill_position

__all__ = ["compare_fills", "heatmap", "output_label", "pixel_heatmap", "readings_of"]


def readings_of(result: object) -> ClassReadings:
    """`result` when it is a `SweepResult` or `ClassMeanResult`.

    Raises
    ------
    InputTypeError
        Otherwise, naming ``result``.
    """
    if not isinstance(result, ClassReadings):
        raise InputTypeError(
            f"result: expected a SweepResult or ClassMeanResult, got {describe(result)}"
        )
    return result


def output_label(result: ClassReadings) -> str:
    """What the outputs are, for axis labels: ``"logit"`` or ``"<output> output"``."""
    output = str(getattr(result, "output", "softmax"))
    if output == "logits":
        return "logit"
    return f"{output} output"


def _image_index(result: ClassReadings, image_index: object) -> int | None:
    if image_index is None:
        return None
    if not isinstance(result, SweepResult):
        raise InputTypeError(
            "image_index: only a SweepResult has per-image maps; got it for "
            f"{describe(result)} (leave image_index=None for the class mean)"
        )
    if isinstance(image_index, bool) or not isinstance(image_index, (int, np.integer)):
        raise InputTypeError(f"image_index: expected None or an int, got {describe(image_index)}")
    if not 0 <= image_index < result.num_images:
        raise InputValueError(
            f"image_index: expected an index in [0, {result.num_images - 1}], got {image_index}"
        )
    return int(image_index)


def _spatial(readings: ClassReadings) -> tuple[int, ...]:
    return tuple(readings.regions.spatial_shape)


def _slice_at(slice_at: object, spatial: tuple[int, ...]) -> tuple[int, int, int] | None:
    if slice_at is None:
        return None
    if len(spatial) != 3:
        raise InputValueError(
            f"slice_at: only a 3D map is drawn as slices; these regions are {len(spatial)}D "
            f"(shape {spatial}), got slice_at={slice_at!r}"
        )
    given = list(slice_at) if isinstance(slice_at, (tuple, list)) else None
    if (
        given is None
        or len(given) != 3
        or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in given)
    ):
        raise InputTypeError(
            f"slice_at: expected None or three ints (d, h, w), got {describe(slice_at)}"
        )
    for axis, index, size in zip("dhw", given, spatial, strict=True):
        if not 0 <= index < size:
            raise InputValueError(
                f"slice_at: expected {axis} in [0, {size - 1}] for a volume of shape {spatial}, "
                f"got {tuple(int(i) for i in given)}"
            )
    return int(given[0]), int(given[1]), int(given[2])


def _fill_text(readings: ClassReadings, fill: object, fill_index: object) -> str:
    if fill is None and fill_index is None:
        return "mean over fills"
    return f"fill {readings.fill_labels[readings.fill_position(fill, fill_index=fill_index)]}"


class _Map(NamedTuple):
    values: Tensor  # (*spatial), float64, on the CPU
    which: str  # "image 3" or "mean of 12 images"
    detail: str


def _image_drops(
    result: SweepResult, number: int, index: int, fill: object, fill_index: object
) -> Tensor:
    """(R,) float64: image `number`'s drop of class `index` per region, one fill or their mean."""
    position = fill_position(fill, fill_index, result.fill_labels)
    outputs = result.occluded[number, :, :, index].detach().to("cpu", torch.float64)
    after = outputs.mean(dim=1) if position is None else outputs[:, position]
    return float(result.baseline[number, index]) - after


def _pixel_map(
    readings: ClassReadings,
    index: int,
    image_index: int | None,
    fill: object,
    fill_index: object,
    correct_only: bool,
) -> _Map:
    regions = readings.regions
    detail = f"{len(regions)} windows"
    if image_index is not None and isinstance(readings, SweepResult):
        # result.heatmap(index)[image_index], without painting the other N - 1 maps.
        drops = _image_drops(readings, image_index, index, fill, fill_index)
        values = regions.to("cpu").pixel_mean(drops)
        if readings.computed is not None:
            share = float(readings.computed[image_index].double().mean())
            detail = f"{100 * share:.0f} % of {len(regions)} windows computed"
        return _Map(values.detach().to("cpu", torch.float64), f"image {image_index}", detail)
    values = readings.class_heatmap(
        index, fill=fill, fill_index=fill_index, correct_only=correct_only
    )
    count = readings.selected_count(index, correct_only=correct_only)
    return _Map(values.detach().to("cpu", torch.float64), f"mean of {count} images", detail)


def _finish(
    figure: Figure,
    axes: list[Axes],
    painted: list[AxesImage],
    at: tuple[int, ...] | None,
    title: str,
    colour_label: str,
    *,
    own_figure: bool,
) -> None:
    if at is None:
        axes[0].set_title(title)
    else:
        where = f"slices through the peak (d, h, w) = {tuple(at)}"
        if own_figure:
            figure.suptitle(f"{title}\n{where}")
        else:
            # The caller's figure may hold other things: the text goes on the middle slice.
            axes[1].set_title(f"{title}\n{where}\n{axes[1].get_title()}")
    if painted:
        figure.colorbar(painted[0], ax=axes, label=colour_label)


def heatmap(
    result: ClassReadings,
    cls: object,
    image: Tensor,
    *,
    image_index: int | None = None,
    correct_only: bool = True,
    fill: object = None,
    fill_index: object = None,
    scale: float | None = None,
    slice_at: Sequence[int] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Output drop of class `cls` per region, painted over the image it belongs to.

    With `image_index`, the map is that image's own drop, ``baseline[n, cls] -
    occluded[n, r, v, cls]`` per region (averaged over the fills unless one is picked), and
    `image` should be image n of the sweep. Without it, the map is the class mean,
    ``result.mean_drop(cls)`` over the images `correct_only` selects, and `image` is only a
    backdrop: any image of the right size is accepted, and the title says "N images".

    Each region's positions get the region's value (positions of overlapping regions the
    mean), red where occluding lowers the output and blue where it raises it, on a colour
    scale symmetric around 0 (``-scale .. +scale``; default the largest |drop| of this map).
    The drawing follows the regions' rank:

    - 2D: the map painted over the image, each region's id and rank (#1 = largest drop)
      written at its centroid, and a colour bar;
    - 1D: the signal's channels drawn thin, the map as a curve on a twin axis (filled to 0),
      each region's id and rank as a tick label on a top axis, above the region's centre;
    - 3D: three orthogonal slices (axial, coronal, sagittal) through the map's peak (or
      `slice_at`), painted over the volume's slices with one colour scale and one colour bar.

    Parameters
    ----------
    result : SweepResult or ClassMeanResult
        The sweep to plot.
    cls : int, numpy integer, 0-d integer Tensor or str
        Class index or name.
    image : Tensor
        The input under the map: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` (min-max
        normalised for display, so whitened inputs work); a signal ``(C, L)`` or ``(L,)``
        (drawn in its own units); a volume ``(D, H, W)`` or ``(1, D, H, W)``.
    image_index : int, optional
        Which image of a `SweepResult` to map; None: the class mean.
    correct_only : bool
        Which images the class mean averages over (as in `class_curves`); not used with
        `image_index`.
    fill : number or str, optional
        Value or label of one fill; with neither `fill` nor `fill_index`, the mean over the
        fills.
    fill_index : int, optional
        Position of one fill.
    scale : positive number, optional
        Half-width of the colour scale; give several figures the same `scale` to compare them.
    slice_at : (d, h, w), optional
        3D only: the point the slices pass through; default the map's peak.
    ax : Axes, or a sequence of three Axes for a 3D map, optional
        Where to draw; a new figure when None.

    Returns
    -------
    Figure
        The new figure, or the one holding `ax` when given.

    Raises
    ------
    EmptySelectionError
        When the class mean has no image selected.
    InputValueError
        When `image` does not match the regions' size, `image_index` is out of range, `scale`
        is not finite and positive, or `slice_at` is given for a map that is not 3D or lies
        outside it.
    InputTypeError
        When `result` is not a result, `image` is not a Tensor, `image_index` is not an int
        or is given for a `ClassMeanResult`, `scale` is not a number, `slice_at` is not three
        ints, or `ax` is not what the rank needs.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> images = torch.rand(10, 1, 8, 8)
    >>> result = op.sweep(model, images, op.grid(8, 8, 2, 2), progress=False)
    >>> fig = heatmap(result, 1, images[0], correct_only=False)
    >>> fig.axes[0].get_title()
    'class 1: drop of softmax output\\n(mean over fills, 10 images)'
    >>> fig = heatmap(result, 1, images[3], image_index=3, scale=0.05)
    >>> fig.axes[0].get_title()
    'class 1: drop of softmax output, image 3\\n(mean over fills)'
    >>> [float(limit) for limit in fig.axes[1].get_ylim()]  # the colour bar
    [-0.05, 0.05]
    """
    readings = readings_of(result)
    index = readings.class_index(cls)
    regions = readings.regions
    spatial = _spatial(readings)
    display_input(image, spatial)
    flag = check_bool("correct_only", correct_only)
    number = _image_index(readings, image_index)
    at = _slice_at(slice_at, spatial)
    fill_text = _fill_text(readings, fill, fill_index)
    if number is not None and isinstance(readings, SweepResult):
        drops = _image_drops(readings, number, index, fill, fill_index)
        which, detail = f", image {number}", ""
    else:
        drops = readings.mean_drop(
            index, fill=fill, fill_index=fill_index, correct_only=flag
        ).tensor.to("cpu", torch.float64)
        count = readings.selected_count(index, correct_only=flag)
        which, detail = "", f", {count} images"
    limit = colour_limit(drops, scale)
    painted_map = regions.to("cpu").pixel_mean(drops)
    covered = regions.coverage.cpu() > 0

    output = output_label(readings)
    figure, axes = target_axes(len(spatial), ax)
    painted, point = draw_map(
        axes, painted_map, covered, image, limit, at=at, label=f"drop of {output}"
    )
    if len(spatial) < 3:
        _label_regions(axes[0], regions.masks.cpu(), regions.ids, drops)
    name = class_label(index, readings.class_names)
    title = f"{name}: drop of {output}{which}\n({fill_text}{detail})"
    _finish(figure, axes, painted, point, title, f"mean drop of {output}", own_figure=ax is None)
    return figure


def _label_regions(axes: Axes, masks: Tensor, ids: Sequence[int], drops: Tensor) -> None:
    """Write each region's id and rank (#1 = largest drop): at its centroid on a 2D map, as
    tick labels of a top x axis above its centre on a 1D curve (where text inside the axes
    would cross the curve)."""
    order = torch.sort(drops, descending=True, stable=True).indices.tolist()
    rank_of = {position: rank for rank, position in enumerate(order, start=1)}
    if masks.dim() == 2:
        centres = [float(torch.nonzero(mask)[:, 0].double().mean()) for mask in masks]
        top = axes.secondary_xaxis("top")
        top.set_xticks(centres, [f"{region_id}\n#{rank_of[p]}" for p, region_id in enumerate(ids)])
        top.tick_params(labelsize="x-small", length=2)
        return
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    for position, region_id in enumerate(ids):
        rows, cols = torch.nonzero(masks[position], as_tuple=True)
        axes.text(
            float(cols.double().mean()), float(rows.double().mean()),
            f"{region_id}\n#{rank_of[position]}",
            ha="center", va="center", fontsize="x-small", color="white", path_effects=outline,
        )  # fmt: skip


def pixel_heatmap(
    result: ClassReadings,
    cls: object,
    image: Tensor,
    *,
    image_index: int | None = None,
    correct_only: bool = True,
    fill: object = None,
    fill_index: object = None,
    scale: float | None = None,
    slice_at: Sequence[int] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """A per-position heat map of the output drop of class `cls`, over its image.

    With `image_index`, the map is ``result.heatmap(cls)[image_index]`` (captum
    ``Occlusion``'s map of that image), and `image` should be that image; without it, the
    class-mean map ``result.class_heatmap(cls)`` over the selected images (the only choice
    for a `ClassMeanResult`), with `image` only a backdrop. Unlike `heatmap`, which labels
    each region, this paints positions only, so it suits hundreds of overlapping sliding
    windows. Red: occluding lowers the output, blue: raises it, on a colour scale symmetric
    around 0 (``-scale .. +scale``; default the largest |value| of this map); positions no
    window covers are left unpainted. A drill-down result's title gives the share of
    windows computed for that image. The drawing follows the regions' rank as in `heatmap`:
    a curve under a signal (1D), the map over the image (2D), three orthogonal slices
    through the map's peak (3D). To compare fills on one scale, see `compare_fills`.

    Parameters
    ----------
    result : SweepResult or ClassMeanResult
        The sweep to plot.
    cls : int, numpy integer, 0-d integer Tensor or str
        Class index or name.
    image : Tensor
        As in `heatmap`: ``(H, W)``, ``(1, H, W)``, ``(3, H, W)``; ``(C, L)``, ``(L,)``;
        ``(D, H, W)``, ``(1, D, H, W)``.
    image_index : int, optional
        Which image of a `SweepResult` to map; None: the class mean.
    correct_only : bool
        Which images the class-mean map averages (not used with `image_index`).
    fill : number or str, optional
        Value or label of one fill; with neither `fill` nor `fill_index`, the mean over fills.
    fill_index : int, optional
        Position of one fill.
    scale : positive number, optional
        Half-width of the colour scale; give several figures the same `scale` to compare them.
    slice_at : (d, h, w), optional
        3D only: the point the slices pass through; default the map's peak.
    ax : Axes, or a sequence of three Axes for a 3D map, optional
        Where to draw; a new figure when None.

    Returns
    -------
    Figure
        The new figure, or the one holding `ax` when given.

    Raises
    ------
    InputTypeError
        When `result` is not a result, `image` is not a Tensor, `image_index` is not an int
        or is given for a `ClassMeanResult`, `scale` is not a number, `slice_at` is not three
        ints, or `ax` is not what the rank needs.
    InputValueError
        When `image_index` is out of range, `image` does not match the regions' size,
        `scale` is not finite and positive, or `slice_at` is given for a map that is not 3D
        or lies outside it.
    EmptySelectionError
        For a class-mean map with no image selected.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> images = torch.rand(2, 1, 8, 8)
    >>> result = op.sweep(model, images, op.sliding_windows(8, 8, 4, 1), fills=0.0,
    ...                   progress=False)
    >>> fig = pixel_heatmap(result, 1, images[0], image_index=0, fill=0.0, scale=0.1)
    >>> fig.axes[0].get_title()
    'class 1: drop of softmax output, image 0\\n(fill 0.0, 25 windows)'
    >>> [float(limit) for limit in fig.axes[1].get_ylim()]  # the colour bar
    [-0.1, 0.1]
    """
    readings = readings_of(result)
    index = readings.class_index(cls)
    spatial = _spatial(readings)
    display_input(image, spatial)
    flag = check_bool("correct_only", correct_only)
    number = _image_index(readings, image_index)
    at = _slice_at(slice_at, spatial)
    fill_text = _fill_text(readings, fill, fill_index)
    found = _pixel_map(readings, index, number, fill, fill_index, flag)
    limit = colour_limit(found.values, scale)
    covered = readings.regions.coverage.cpu() > 0

    name = class_label(index, readings.class_names)
    output = output_label(readings)
    figure, axes = target_axes(len(spatial), ax)
    painted, point = draw_map(
        axes, found.values, covered, image, limit, at=at, label=f"drop of {output}"
    )
    title = f"{name}: drop of {output}, {found.which}\n({fill_text}, {found.detail})"
    _finish(figure, axes, painted, point, title, f"drop of {output}", own_figure=ax is None)
    return figure


def compare_fills(
    result: ClassReadings,
    cls: object,
    image: Tensor,
    *,
    image_index: int | None = None,
    correct_only: bool = True,
    scale: float | None = None,
    slice_at: Sequence[int] | None = None,
) -> Figure:
    """The per-position maps of every fill side by side, on one colour scale.

    One panel per fill of `pixel_heatmap`'s map (one image's with `image_index`, else the
    class mean), all drawn with one symmetric colour scale: `scale`, or the largest |value|
    over all the fills' maps, so equal colours mean equal drops across panels. 2D: one row
    of images and one colour bar; 1D: one row per fill, the curves' axes sharing one range;
    3D: one row of three slices per fill, every row through the same point (`slice_at`, or
    the peak of the map averaged over the fills) and one colour bar.

    Parameters
    ----------
    result : SweepResult or ClassMeanResult
    cls : int, numpy integer, 0-d integer Tensor or str
    image : Tensor
        As in `pixel_heatmap`.
    image_index : int, optional
        Which image of a `SweepResult` to map; None: the class mean.
    correct_only : bool
        Which images the class means average (not used with `image_index`).
    scale : positive number, optional
        Half-width of the colour scale; default the largest |value| over the fills.
    slice_at : (d, h, w), optional
        3D only: the point every row's slices pass through.

    Returns
    -------
    Figure
        A new figure; its suptitle names the class, the image and the scale.

    Raises
    ------
    As `pixel_heatmap`.

    Examples
    --------
    >>> import torch, occlusion_probe as op
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> images = torch.rand(2, 1, 8, 8)
    >>> result = op.sweep(model, images, op.sliding_windows(8, 8, 4, 2), fills=(0.0, 1.0),
    ...                   progress=False)
    >>> fig = compare_fills(result, 1, images[0], image_index=0)
    >>> [axes.get_title() for axes in fig.axes[:2]]
    ['fill 0.0', 'fill 1.0']
    >>> limits = {image.norm.vmax for axes in fig.axes[:2] for image in axes.get_images()[1:]}
    >>> len(limits)  # one scale for both panels
    1
    """
    readings = readings_of(result)
    index = readings.class_index(cls)
    spatial = _spatial(readings)
    display_input(image, spatial)
    flag = check_bool("correct_only", correct_only)
    number = _image_index(readings, image_index)
    at = _slice_at(slice_at, spatial)
    maps = [
        _pixel_map(readings, index, number, None, v, flag) for v in range(len(readings.fill_labels))
    ]
    stacked = torch.stack([m.values for m in maps])
    limit = colour_limit(stacked, scale)
    covered = readings.regions.coverage.cpu() > 0
    if len(spatial) == 3 and at is None:
        d, h, w = peak_index(stacked.mean(dim=0), covered)
        at = (d, h, w)

    fills = len(maps)
    rank = len(spatial)
    if rank == 1:
        figure = Figure(figsize=(8.0, 2.4 * fills + 0.8), layout="constrained")
        rows = [[axes] for axes in figure.subplots(fills, 1, sharex=True, squeeze=False)[:, 0]]
    elif rank == 2:
        figure = Figure(figsize=(3.6 * fills + 1.2, 4.0), layout="constrained")
        rows = [[axes] for axes in figure.subplots(1, fills, squeeze=False)[0]]
    else:
        figure = Figure(figsize=(11.0, 3.4 * fills + 0.8), layout="constrained")
        rows = [list(row) for row in figure.subplots(fills, 3, squeeze=False)]
    output = output_label(readings)
    painted: list[AxesImage] = []
    for label, found, axes in zip(readings.fill_labels, maps, rows, strict=True):
        drawn, _ = draw_map(
            axes, found.values, covered, image, limit, at=at, label=f"drop of {output}"
        )
        painted += drawn
        first = axes[0]
        first.set_title(f"fill {label}" if rank < 3 else f"fill {label}: {first.get_title()}")
    name = class_label(index, readings.class_names)
    where = "" if at is None else f", slices through (d, h, w) = {at}"
    figure.suptitle(f"{name}: drop of {output}, {maps[0].which}; one scale, +-{limit:.3g}{where}")
    if painted:
        figure.colorbar(painted[0], ax=figure.axes, label=f"drop of {output}")
    return figure
