"""Drawing one occlusion map over the input it belongs to, at rank 1, 2 or 3.

The drawing layer of `occlusion_probe.plot`, written against plain tensors: a map of shape
``(*spatial)`` (a signal's ``(L,)``, an image's ``(H, W)``, a volume's ``(D, H, W)``), a bool
mask of the positions some region covers, and the input ``(C, *spatial)``. `plot` reads the
maps from results and picks the drawing by the regions' rank:

- rank 1 (`draw_curve`): the signal's channels drawn thin, the importance as a line on a twin
  y axis with the area between it and 0 filled (red where occluding lowers the output, blue
  where it raises it);
- rank 2 (`draw_image`): the map painted semi-transparently over the image;
- rank 3 (`draw_slices`): three orthogonal slices (axial, coronal, sagittal) through one
  point (by default the map's peak, `peak_index`), each painted over the volume's slice.

Every drawing uses a colour scale symmetric around 0, from ``-limit`` to ``+limit``
(`colour_limit`), so several pictures drawn with one limit compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.image import AxesImage
from torch import Tensor

from .data import check_tensor_layout
from .errors import InputTypeError, InputValueError, describe

__all__ = [
    "SLICE_NAMES",
    "colour_limit",
    "display_input",
    "draw_curve",
    "draw_image",
    "draw_map",
    "draw_slices",
    "peak_index",
    "target_axes",
]

# The orthogonal slices of a (D, H, W) volume, each named with the axis it fixes.
SLICE_NAMES = (("axial", "d"), ("coronal", "h"), ("sagittal", "w"))
_CMAP = "coolwarm"


def _root(axes: Axes) -> Figure:
    parent = axes.figure
    # A subfigure's axes still belong to one root figure, which is what callers save.
    root = parent.figure if isinstance(parent, SubFigure) else parent
    if not isinstance(root, Figure):
        raise InputValueError("ax: expected Axes placed in a figure, got Axes without one")
    return root


def target_axes(rank: int, ax: object) -> tuple[Figure, list[Axes]]:
    """The figure and the axes a map of `rank` is drawn into: new ones when `ax` is None.

    Rank 1 and 2 draw into one Axes, rank 3 into three (axial, coronal, sagittal).

    Raises
    ------
    InputTypeError
        When `ax` is neither None, an Axes (rank 1, 2) nor a sequence of three Axes (rank 3).
    """
    count = 3 if rank == 3 else 1
    if ax is None:
        if rank == 3:
            figure = Figure(figsize=(12.0, 4.4), layout="constrained")
            return figure, list(figure.subplots(1, 3))
        size = (8.0, 3.6) if rank == 1 else (5.5, 4.8)
        figure = Figure(figsize=size, layout="constrained")
        return figure, [figure.add_subplot()]
    if count == 1:
        if not isinstance(ax, Axes):
            raise InputTypeError(f"ax: expected a matplotlib Axes or None, got {describe(ax)}")
        return _root(ax), [ax]
    given = list(ax) if isinstance(ax, Sequence) else None
    if given is None or len(given) != 3 or not all(isinstance(a, Axes) for a in given):
        raise InputTypeError(
            "ax: a 3D map is drawn as three slices and needs a sequence of three matplotlib "
            f"Axes (axial, coronal, sagittal) or None, got {describe(ax)}"
        )
    return _root(given[0]), given


def colour_limit(values: Tensor, scale: object = None) -> float:
    """The half-width of the symmetric colour scale: `scale`, or the largest finite |value|.

    Parameters
    ----------
    values : Tensor, any shape
        The map (or maps) to be drawn with one scale.
    scale : positive number, optional
        A given limit (several calls that share it compare directly).

    Returns
    -------
    float
        `scale`; without it the largest finite absolute value, or 1.0 when that is 0 (a map
        of zeros is drawn white on a scale of +-1).

    Raises
    ------
    InputTypeError
        When `scale` is not None nor a real number (bools are refused).
    InputValueError
        When `scale` is not finite and positive.

    Examples
    --------
    >>> colour_limit(torch.tensor([0.5, -2.0])), colour_limit(torch.zeros(3), scale=0.25)
    (2.0, 0.25)
    """
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
            raise InputTypeError(
                f"scale: expected None or a positive number (the colour scale runs from -scale "
                f"to +scale), got {describe(scale)}"
            )
        limit = float(scale)
        if not np.isfinite(limit) or limit <= 0.0:
            raise InputValueError(
                f"scale: expected a finite number > 0 (the colour scale runs from -scale to "
                f"+scale), got {limit!r}"
            )
        return limit
    finite = values[torch.isfinite(values)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    return largest if largest > 0.0 else 1.0


def _minmax(array: np.ndarray) -> np.ndarray:
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return np.zeros_like(array)
    low, high = float(finite.min()), float(finite.max())
    # Min-max to [0, 1] so that whitened or GCN-normalised inputs display as images.
    span = high - low if high > low else 1.0
    return np.clip(np.nan_to_num((array - low) / span), 0.0, 1.0)


_EXPECTED = {
    1: "(C, L) or (L,)",
    2: "(H, W), (1, H, W) or (3, H, W)",
    3: "(D, H, W) or (1, D, H, W)",
}


def display_input(image: object, spatial: tuple[int, ...]) -> np.ndarray:
    """The input as drawn under a map of shape `spatial` (rank 1, 2 or 3).

    Parameters
    ----------
    image : Tensor
        A signal ``(C, L)`` or ``(L,)``; an image ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``;
        a volume ``(D, H, W)`` or ``(1, D, H, W)`` (one channel: pass ``volume[c]`` for
        channel c of a multi-channel volume).
    spatial : tuple of int
        The map's shape.

    Returns
    -------
    numpy.ndarray, float64
        A signal as given, shape ``(C, L)`` (drawn in its own units); an image min-max
        normalised to [0, 1], shape ``(H, W)`` or ``(H, W, 3)``; a volume min-max normalised
        over the whole volume (so its slices share one gray scale), shape ``(D, H, W)``.

    Raises
    ------
    InputTypeError
        When `image` is not a real-valued Tensor.
    InputValueError
        When its shape is none of the above, its spatial size is not `spatial`, it holds
        NaN or inf, or it is on the meta device.

    Examples
    --------
    >>> display_input(torch.arange(4.0), (4,))
    array([[0., 1., 2., 3.]])
    """
    rank = len(spatial)
    expected = _EXPECTED[rank]
    if not isinstance(image, Tensor) or image.is_complex() or image.dtype == torch.bool:
        raise InputTypeError(
            f"image: expected a Tensor of real numbers, shape {expected}, got {describe(image)}"
        )
    check_tensor_layout("image", image)
    pixels = image.detach()
    if pixels.dim() == rank:
        pixels = pixels[None]
    if pixels.dim() != rank + 1 or (rank == 2 and pixels.shape[0] not in (1, 3)):
        raise InputValueError(f"image: expected shape {expected}, got {tuple(image.shape)}")
    if rank == 3 and pixels.shape[0] != 1:
        raise InputValueError(
            f"image: expected shape {expected} (one channel of a volume: pass image[c] for "
            f"channel c), got {tuple(image.shape)}"
        )
    if tuple(pixels.shape[1:]) != tuple(spatial):
        raise InputValueError(
            f"image: expected spatial size {tuple(spatial)} to match the regions, "
            f"got {tuple(pixels.shape[1:])}"
        )
    array = pixels.to("cpu", torch.float64).numpy()
    if not np.isfinite(array).all():
        # a min-max of NaN is NaN: the picture under the map would come out blank
        raise InputValueError(
            f"image: expected finite values to draw, got NaN or inf at "
            f"{int((~np.isfinite(array)).sum())} of {array.size} positions"
        )
    if rank == 1:
        return array
    if rank == 2 and array.shape[0] == 3:
        return _minmax(np.moveaxis(array, 0, -1))
    return _minmax(array[0])


def peak_index(heat: Tensor, covered: Tensor) -> tuple[int, ...]:
    """Index of the largest finite value of `heat` among the covered positions.

    Ties go to the first in row-major order; with no covered finite position, the first
    position.

    Parameters
    ----------
    heat : Tensor, shape (*spatial)
    covered : Tensor, shape (*spatial), bool

    Returns
    -------
    tuple of int
        One index per axis.

    Examples
    --------
    >>> heat = torch.zeros(2, 3, 4)
    >>> heat[1, 2, 0] = 5.0
    >>> peak_index(heat, torch.ones(2, 3, 4, dtype=torch.bool))
    (1, 2, 0)
    """
    values = heat.detach().to("cpu", torch.float64)
    usable = covered.cpu() & torch.isfinite(values)
    if not bool(usable.any()):
        return (0,) * values.dim()
    masked = torch.where(usable, values, torch.full_like(values, -torch.inf)).flatten()
    # argmax of a float tensor may return any of several equal maxima; the first is stated.
    best = torch.nonzero(masked == masked.max())[0, 0]
    flat = int(best)
    index = []
    for size in reversed(values.shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def _overlay(heat: Tensor, covered: Tensor) -> np.ma.MaskedArray:
    values = heat.detach().to("cpu", torch.float64).numpy()
    return np.ma.masked_array(values, mask=~covered.cpu().numpy())


def draw_image(
    axes: Axes,
    heat: Tensor,
    covered: Tensor,
    display: np.ndarray,
    limit: float,
    *,
    alpha: float = 0.6,
) -> AxesImage:
    """Paint an (H, W) map over an image on `axes`; uncovered pixels stay unpainted.

    Parameters
    ----------
    axes : Axes
    heat : Tensor, shape (H, W)
    covered : Tensor, shape (H, W), bool
    display : numpy.ndarray, shape (H, W) or (H, W, 3)
        From `display_input`, in [0, 1].
    limit : float
        The colour scale runs from -limit to +limit.
    alpha : float
        Opacity of the map.

    Returns
    -------
    AxesImage
        The painted map (its array is the map, masked where uncovered).

    Examples
    --------
    >>> figure = Figure()
    >>> painted = draw_image(figure.add_subplot(), torch.ones(4, 4),
    ...                      torch.ones(4, 4, dtype=torch.bool), np.zeros((4, 4)), 1.0)
    >>> float(painted.get_array().sum())
    16.0
    """
    if display.ndim == 2:
        axes.imshow(display, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        axes.imshow(display, interpolation="nearest")
    painted = axes.imshow(
        _overlay(heat, covered),
        cmap=_CMAP,
        norm=Normalize(vmin=-limit, vmax=limit),
        alpha=alpha,
        interpolation="nearest",
    )
    axes.set_axis_off()
    return painted


def draw_curve(
    axes: Axes,
    heat: Tensor,
    covered: Tensor,
    signal: np.ndarray,
    limit: float,
    *,
    label: str = "drop",
) -> Axes:
    """Draw a signal's channels thin on `axes` and an (L,) map as a curve on a twin y axis.

    The curve is NaN (a gap) where no region covers the sample; the area between it and 0
    is filled red where the map is positive (occluding lowers the output) and blue where it
    is negative. The twin axis runs from -limit to +limit.

    Parameters
    ----------
    axes : Axes
        Receives the signal (x: sample, y: signal value).
    heat : Tensor, shape (L,)
    covered : Tensor, shape (L,), bool
    signal : numpy.ndarray, shape (C, L)
        From `display_input`.
    limit : float
    label : str
        The twin axis' label.

    Returns
    -------
    Axes
        The twin axes holding the curve (its one line is the map).

    Examples
    --------
    >>> figure = Figure()
    >>> twin = draw_curve(figure.add_subplot(), torch.tensor([0.0, 1.0, -1.0]),
    ...                   torch.ones(3, dtype=torch.bool), np.zeros((2, 3)), 1.0)
    >>> twin.get_lines()[0].get_ydata().tolist()
    [0.0, 1.0, -1.0]
    """
    length = signal.shape[-1]
    positions = np.arange(length)
    for channel in signal:
        axes.plot(positions, channel, color="0.45", linewidth=0.6, alpha=0.8)
    axes.set_xlim(-0.5, length - 0.5)
    axes.set_xlabel("sample")
    axes.set_ylabel("signal" if signal.shape[0] == 1 else f"signal ({signal.shape[0]} channels)")
    twin = axes.twinx()
    values = np.where(covered.cpu().numpy(), heat.detach().to("cpu", torch.float64).numpy(), np.nan)
    from matplotlib import colormaps

    cmap = colormaps[_CMAP]
    twin.fill_between(
        positions, 0.0, values, where=values > 0, color=cmap(0.9), alpha=0.35, linewidth=0
    )
    twin.fill_between(
        positions, 0.0, values, where=values < 0, color=cmap(0.1), alpha=0.35, linewidth=0
    )
    twin.plot(positions, values, color="black", linewidth=1.2)
    twin.axhline(0.0, color="0.3", linewidth=0.6, linestyle=":")
    twin.set_ylim(-limit, limit)
    twin.set_ylabel(label)
    return twin


def draw_slices(
    axes: Sequence[Axes],
    heat: Tensor,
    covered: Tensor,
    volume: np.ndarray,
    limit: float,
    at: tuple[int, int, int],
    *,
    alpha: float = 0.6,
) -> list[AxesImage]:
    """Paint a (D, H, W) map over a volume as three orthogonal slices through `at`.

    Axial is ``[d, :, :]`` (H down, W across), coronal ``[:, h, :]`` (D down, W across),
    sagittal ``[:, :, w]`` (D down, H across); each title names the slice and the index it
    fixes, and a cross marks `at` in each. One colour scale, -limit to +limit, serves all
    three.

    Parameters
    ----------
    axes : sequence of three Axes
    heat : Tensor, shape (D, H, W)
    covered : Tensor, shape (D, H, W), bool
    volume : numpy.ndarray, shape (D, H, W)
        From `display_input`, in [0, 1].
    limit : float
    at : (d, h, w)
        The point the slices pass through (`peak_index` by default in `plot`).
    alpha : float
        Opacity of the map.

    Returns
    -------
    list of AxesImage
        The three painted slices, axial first.

    Examples
    --------
    >>> figure = Figure()
    >>> heat = torch.rand(4, 5, 6)
    >>> images = draw_slices(figure.subplots(1, 3), heat, torch.ones(4, 5, 6, dtype=torch.bool),
    ...                      np.zeros((4, 5, 6)), 1.0, (1, 2, 3))
    >>> [image.get_array().shape for image in images]
    [(5, 6), (4, 6), (4, 5)]
    >>> figure.axes[1].get_title()
    'coronal, h = 2'
    """
    d, h, w = at
    overlay = _overlay(heat, covered)
    every = slice(None)
    cuts: tuple[tuple[tuple[int | slice, ...], tuple[int, int]], ...] = (
        ((d, every, every), (w, h)),
        ((every, h, every), (w, d)),
        ((every, every, w), (h, d)),
    )
    painted = []
    for target, (name, axis), (cut, (x, y)) in zip(axes, SLICE_NAMES, cuts, strict=True):
        target.imshow(volume[cut], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        painted.append(
            target.imshow(
                overlay[cut],
                cmap=_CMAP,
                norm=Normalize(vmin=-limit, vmax=limit),
                alpha=alpha,
                interpolation="nearest",
            )
        )
        target.plot([x], [y], marker="+", color="black", markersize=10, markeredgewidth=1.5)
        target.set_title(f"{name}, {axis} = {at['dhw'.index(axis)]}")
        target.set_xticks([])
        target.set_yticks([])
    return painted


def draw_map(
    axes: Sequence[Axes],
    heat: Tensor,
    covered: Tensor,
    image: Tensor,
    limit: float,
    *,
    at: tuple[int, ...] | None = None,
    label: str = "drop",
) -> tuple[list[AxesImage], tuple[int, ...] | None]:
    """Draw a map of any rank over its input: `draw_curve`, `draw_image` or `draw_slices`.

    Parameters
    ----------
    axes : sequence of Axes
        One (rank 1, 2) or three (rank 3).
    heat : Tensor, shape (*spatial)
    covered : Tensor, shape (*spatial), bool
    image : Tensor, shape (C, *spatial) or (*spatial)
        Checked by `display_input`.
    limit : float
    at : tuple of int, optional
        Rank 3: the point the slices pass through; default `peak_index`.
    label : str
        Rank 1: the twin axis' label.

    Returns
    -------
    (list of AxesImage, tuple of int or None)
        The painted images (none at rank 1, whose curve has no colour bar) and, at rank 3,
        the point the slices pass through.

    Examples
    --------
    >>> figure = Figure()
    >>> images, at = draw_map(figure.subplots(1, 3), torch.rand(3, 3, 3),
    ...                       torch.ones(3, 3, 3, dtype=torch.bool), torch.rand(1, 3, 3, 3), 1.0)
    >>> len(images), len(at)
    (3, 3)
    """
    spatial = tuple(heat.shape)
    display = display_input(image, spatial)
    if len(spatial) == 1:
        draw_curve(axes[0], heat, covered, display, limit, label=label)
        return [], None
    if len(spatial) == 2:
        return [draw_image(axes[0], heat, covered, display, limit)], None
    point = peak_index(heat, covered) if at is None else at
    d, h, w = point
    return draw_slices(axes, heat, covered, display, limit, (d, h, w)), point
