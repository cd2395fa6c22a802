"""Regions of an image: which pixels each occlusion covers.

A `Regions` object holds boolean masks of shape (R, H, W) and the integer id of each mask.
`grid` numbers the cells of a rows x cols grid 1..R row-major, as the paper numbers its 16
areas; `Regions.from_label_map` turns any integer map (superpixels, captum's ``feature_mask``)
into regions; `sliding_windows` makes (possibly overlapping) square or rectangular windows.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .errors import InputTypeError, InputValueError, describe
from .selection import integer_value

__all__ = ["Regions", "WindowGrid", "grid", "mask_digest", "sliding_windows"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name}: expected a positive int, got {describe(value)}")
    if value < 1:
        raise InputValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def _pair(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InputValueError(
                f"{name}: expected an int or a pair (height, width), got {value!r}"
            )
        return _positive_int(f"{name}[0]", value[0]), _positive_int(f"{name}[1]", value[1])
    size = _positive_int(name, value)
    return size, size


@dataclass(frozen=True)
class WindowGrid:
    """The geometry of regions that are equal rectangles at regular steps (sliding windows).

    Attributes
    ----------
    window : (int, int)
        Window height and width in pixels.
    stride : (int, int)
        Step between window starts along rows and columns (the window size along an axis
        with a single position).
    tops : tuple of int
        Distinct top rows of the windows, increasing.
    lefts : tuple of int
        Distinct left columns of the windows, increasing.

    Region ``i * len(lefts) + j`` is the window at ``(tops[i], lefts[j])`` (row-major).

    Examples
    --------
    >>> sliding_windows(8, 8, window=4, stride=2).window_grid()
    WindowGrid(window=(4, 4), stride=(2, 2), tops=(0, 2, 4), lefts=(0, 2, 4))
    """

    window: tuple[int, int]
    stride: tuple[int, int]
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols): how many window positions there are along each axis."""
        return len(self.tops), len(self.lefts)


def _regular_starts(starts: list[int], size: int) -> int | None:
    """The common step of increasing `starts` (`size` for one start), None if irregular."""
    if len(starts) == 1:
        return size
    steps = {b - a for a, b in itertools.pairwise(starts)}
    if len(steps) != 1:
        return None
    step = steps.pop()
    return step if step > 0 else None


@dataclass(frozen=True, eq=False)
class Regions:
    """Boolean masks of the regions to occlude, with their ids.

    Parameters
    ----------
    masks : Tensor, shape (R, H, W), dtype bool
        ``masks[r]`` is True on the pixels region ``ids[r]`` covers. Every region must cover
        at least one pixel. Regions may overlap (e.g. `sliding_windows`).
    ids : tuple of int, length R
        Distinct integer region ids, in the order of ``masks`` (floats and bools are refused).
    weights : Tensor, shape (R, H, W), floating, optional
        Soft regions (`soften`): the weight w in [0, 1] of each pixel, positive exactly on
        ``masks`` (the support). An occluded pixel is ``x * (1 - w) + fill * w``, and heat
        maps weight each pixel's regions by w. None (the default): hard regions, w = 1.

    Raises
    ------
    InputTypeError
        When ``masks`` is not a Tensor, or ``ids`` is not a sequence of integers.
    InputValueError
        When ``masks`` is not a bool tensor of shape (R, H, W), R is 0, the number of ids
        differs from R, the ids are not distinct, or a region covers no pixel; when
        ``weights`` is not a floating tensor of the masks' shape with values in [0, 1] that
        are positive exactly on the masks.

    Examples
    --------
    >>> regions = grid(48, 48, rows=4, cols=4)
    >>> len(regions), regions.ids[:3], tuple(regions.masks.shape)
    (16, (1, 2, 3), (16, 48, 48))
    >>> int(regions.union([10, 11]).sum())
    288
    """

    masks: Tensor
    ids: tuple[int, ...]
    weights: Tensor | None = None
    _digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        masks = self.masks
        if not isinstance(masks, Tensor):
            raise InputTypeError(
                f"Regions.masks: expected a bool torch.Tensor of shape (R, H, W), got {describe(masks)}"
            )
        if masks.dtype != torch.bool or masks.dim() != 3:
            raise InputValueError(
                f"Regions.masks: expected a bool tensor of shape (R, H, W), got {describe(masks)}"
            )
        if masks.shape[0] == 0:
            raise InputValueError("Regions.masks: expected at least one region, got R = 0")
        if isinstance(self.ids, (str, bytes)) or not isinstance(self.ids, Sequence):
            raise InputTypeError(
                f"Regions.ids: expected a sequence of int ids, got {describe(self.ids)}"
            )
        not_integer = [i for i in self.ids if integer_value(i) is None]
        if not_integer:
            # 1.5 -> 1 or True -> 1 would silently rename regions.
            raise InputTypeError(
                f"Regions.ids: expected integer ids (int, numpy integer), got {not_integer[:5]!r}"
            )
        ids = tuple(int(i) for i in self.ids)
        if len(ids) != masks.shape[0]:
            raise InputValueError(
                f"Regions.ids: expected {masks.shape[0]} ids (one per mask), got {len(ids)}"
            )
        if len(set(ids)) != len(ids):
            raise InputValueError(f"Regions.ids: expected distinct ids, got {ids}")
        sizes = masks.flatten(1).sum(dim=1)
        empty = [ids[r] for r in torch.nonzero(sizes == 0).flatten().tolist()]
        if empty:
            raise InputValueError(
                f"Regions.masks: every region must cover at least one pixel; regions {empty} are empty"
            )
        object.__setattr__(self, "ids", ids)
        if self.weights is not None:
            _check_weights(self.weights, masks)
        # A private copy: the caller's tensor may change afterwards. `masks` itself is a
        # tensor anyone can write into, so its digest is kept and checked before each use.
        own = masks.detach().clone()
        object.__setattr__(self, "masks", own)
        object.__setattr__(self, "_digest", mask_digest(own))

    def check_unchanged(self, name: str = "regions") -> None:
        """Raise `InputValueError` (naming `name`) when ``masks`` was changed in place since
        this `Regions` was made: a region emptied or moved afterwards would be swept as it is
        now, not as it was checked.

        Examples
        --------
        >>> regions = grid(4, 4, 2, 2)
        >>> regions.check_unchanged()
        """
        if mask_digest(self.masks) != self._digest:
            raise InputValueError(
                f"{name}: its masks were changed in place after the Regions was made (the "
                "checks that every region covers a pixel ran on the old masks); make a new "
                "Regions(masks, ids) from the changed masks"
            )

    # -- basic facts --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def __repr__(self) -> str:
        kind = "partition" if self.is_partition else "regions"
        if self.weights is not None:
            kind = f"soft {kind}"
        return f"Regions({len(self)} {kind} of {self.height}x{self.width}, ids {self.ids[0]}..{self.ids[-1]})"

    @property
    def height(self) -> int:
        """H, the image height the masks cover."""
        return int(self.masks.shape[1])

    @property
    def width(self) -> int:
        """W, the image width the masks cover."""
        return int(self.masks.shape[2])

    @property
    def coverage(self) -> Tensor:
        """How many regions cover each pixel: Tensor, shape (H, W), int64."""
        return self.masks.sum(dim=0, dtype=torch.int64)

    @property
    def is_partition(self) -> bool:
        """True when every pixel belongs to exactly one region."""
        return bool((self.coverage == 1).all())

    def pixel_mean(self, values: Tensor) -> Tensor:
        """Per pixel, the mean of `values` over the regions that cover the pixel.

        This is how captum's ``Occlusion`` turns overlapping windows into a per-pixel map;
        for a partition each pixel simply gets its region's value. Pixels no region covers
        get 0 (captum's convention).

        Parameters
        ----------
        values : Tensor, shape (..., R), floating
            One value per region (and any leading dims, e.g. images).

        Returns
        -------
        Tensor, shape (..., H, W)
            In the dtype and on the device of `values`.

        Raises
        ------
        InputTypeError
            When `values` is not a floating Tensor.
        InputValueError
            When its last dim is not R.

        Examples
        --------
        >>> windows = sliding_windows(4, 4, window=2, stride=1)
        >>> windows.pixel_mean(torch.ones(len(windows)))[0]
        tensor([1., 1., 1., 1.])
        """
        if not isinstance(values, Tensor) or not values.is_floating_point():
            raise InputTypeError(
                f"values: expected a floating Tensor of shape (..., R), got {describe(values)}"
            )
        if values.dim() == 0 or values.shape[-1] != len(self):
            raise InputValueError(
                f"values: expected last dim R = {len(self)} (one value per region), "
                f"got shape {tuple(values.shape)}"
            )
        weights = self.masks if self.weights is None else self.weights
        masks = weights.to(device=values.device, dtype=values.dtype)
        coverage = masks.sum(dim=0)
        coverage = torch.where(coverage > 0, coverage, torch.ones_like(coverage))
        return torch.einsum("...r,rhw->...hw", values, masks) / coverage

    def window_grid(self) -> WindowGrid | None:
        """The window geometry when the regions are sliding windows, else None.

        The regions qualify when every mask is a filled rectangle of one size, their top-left
        corners form a regular grid (equal steps along rows and along columns) and the masks
        are in row-major order of that grid, as `sliding_windows` makes them. Nothing is
        stored on `Regions` for this: it is read from the masks, so loaded results qualify too.

        Returns
        -------
        WindowGrid or None

        Examples
        --------
        >>> sliding_windows(8, 8, window=4, stride=2).window_grid().shape
        (3, 3)
        >>> grid(8, 8, rows=2, cols=2).window_grid().stride
        (4, 4)
        >>> Regions.from_label_map(torch.tensor([[0, 1, 1]])).window_grid() is None
        True
        """
        as_bytes = self.masks.view(torch.uint8)
        rows_any, cols_any = as_bytes.amax(dim=2).cpu(), as_bytes.amax(dim=1).cpu()
        tops = rows_any.argmax(dim=1)
        lefts = cols_any.argmax(dim=1)
        heights, widths = rows_any.sum(dim=1), cols_any.sum(dim=1)
        if bool((heights != heights[0]).any()) or bool((widths != widths[0]).any()):
            return None
        window = (int(heights[0]), int(widths[0]))
        sizes = self.masks.flatten(1).sum(dim=1).cpu()
        if bool((sizes != window[0] * window[1]).any()):
            return None  # not filled rectangles (a rectangle's rows x cols equals its area)
        distinct_tops = sorted(set(tops.tolist()))
        distinct_lefts = sorted(set(lefts.tolist()))
        expected_tops = torch.tensor(distinct_tops).repeat_interleave(len(distinct_lefts))
        expected_lefts = torch.tensor(distinct_lefts).repeat(len(distinct_tops))
        if len(self) != expected_tops.numel() or not (
            torch.equal(tops, expected_tops) and torch.equal(lefts, expected_lefts)
        ):
            return None
        stride_h = _regular_starts(distinct_tops, window[0])
        stride_w = _regular_starts(distinct_lefts, window[1])
        if stride_h is None or stride_w is None:
            return None
        return WindowGrid(window, (stride_h, stride_w), tuple(distinct_tops), tuple(distinct_lefts))

    # -- selection ----------------------------------------------------------------------------
    def positions(self, ids: Iterable[int]) -> list[int]:
        """Positions (0-based indices into ``masks``) of the given region ids, in that order.

        Parameters
        ----------
        ids : iterable of int
            Region ids (ints, numpy integers or 0-d integer tensors); a single int is taken
            as one id.

        Returns
        -------
        list of int
            The position of each id, in the order of `ids`.

        Raises
        ------
        InputTypeError
            When an id is not an integer.
        InputValueError
            When an id is unknown; the message names the unknown ids and the valid ones.

        Examples
        --------
        >>> grid(48, 48).positions([10, 11])
        [9, 10]
        """
        single = integer_value(ids)
        if single is not None:
            ids = [single]
        if isinstance(ids, (str, bytes)):
            raise InputTypeError(f"ids: expected integer region ids, got {describe(ids)}")
        given = list(ids)
        bad_type = [i for i in given if integer_value(i) is None]
        if bad_type:
            raise InputTypeError(f"ids: expected integer region ids, got {bad_type!r}")
        wanted = [int(i) for i in given]
        lookup = {region_id: position for position, region_id in enumerate(self.ids)}
        unknown = [i for i in wanted if i not in lookup]
        if unknown:
            raise InputValueError(
                f"ids: unknown region ids {unknown}; valid ids are {_id_summary(self.ids)}"
            )
        return [lookup[i] for i in wanted]

    def select(self, ids: Iterable[int]) -> Regions:
        """The sub-collection of regions with the given ids (order as given).

        Parameters
        ----------
        ids : iterable of int
            Region ids to keep, at least one.

        Returns
        -------
        Regions
            The masks and ids of the given regions, in the order of `ids`.

        Raises
        ------
        InputValueError
            When `ids` is empty or holds an unknown id.

        Examples
        --------
        >>> grid(48, 48).select([10, 11]).ids
        (10, 11)
        """
        positions = self.positions(ids)
        if not positions:
            raise InputValueError("ids: expected at least one region id, got an empty list")
        weights = None if self.weights is None else self.weights[positions]
        return Regions(self.masks[positions], tuple(self.ids[p] for p in positions), weights)

    def union(self, ids: Iterable[int] | None = None) -> Tensor:
        """Pixels covered by any of the given regions (all regions when ids is None).

        Parameters
        ----------
        ids : iterable of int, optional
            Region ids; None (the default) means all regions. No ids give an all-False mask.

        Returns
        -------
        Tensor, shape (H, W), bool
            True on the pixels that at least one of the regions covers.
        """
        if ids is None:
            return self.masks.any(dim=0)
        positions = self.positions(ids)
        if not positions:
            return torch.zeros(self.height, self.width, dtype=torch.bool, device=self.masks.device)
        return self.masks[positions].any(dim=0)

    def to(self, device: torch.device | str) -> Regions:
        """The same regions with masks on `device`.

        Parameters
        ----------
        device : torch.device or str
            Where the masks go, e.g. ``"cuda:0"``.

        Returns
        -------
        Regions
            The same ids, with the masks on `device`.
        """
        weights = None if self.weights is None else self.weights.to(device)
        return Regions(self.masks.to(device), self.ids, weights)

    def soften(self, kind: str = "gaussian", sigma: float = 0.25) -> Regions:
        """Soft regions: each pixel weighted by a bump over its region's bounding box.

        ``"gaussian"`` is MONAI's ``OcclusionSensitivity(mode="gaussian")`` kernel: a 1 at
        the box's centre pixel (index ``size // 2`` along each axis) smoothed by MONAI's
        Gaussian (erf-integrated, truncated at 4 standard deviations, zero outside) of
        standard deviation ``sigma * size`` pixels per axis, then scaled to [0, 1]. The
        weight is 1 at the centre and 0 where the bump is lowest (the box's corners), so
        with fill 0 an occluded pixel ``x * (1 - w)`` is MONAI's ``x * (1 - gaussian)``. A
        region that is not a rectangle gets its box's bump on its own pixels. Pixels of
        weight 0 leave the support, which stays non-empty (the centre has weight 1).

        Parameters
        ----------
        kind : str
            ``"gaussian"``.
        sigma : float
            Standard deviation as a fraction of the box size along each axis, > 0 (MONAI's
            0.25).

        Returns
        -------
        Regions
            The same ids, with ``weights`` set and ``masks`` their support.

        Raises
        ------
        InputValueError
            For another `kind`, or `sigma` not finite and > 0.
        InputTypeError
            When `sigma` is not a number.

        Examples
        --------
        >>> soft = sliding_windows(8, 8, window=4, stride=4).soften("gaussian", sigma=0.25)
        >>> [round(w, 3) for w in soft.weights[0, 2, :4].tolist()]
        [0.137, 0.622, 1.0, 0.622]
        """
        if kind != "gaussian":
            raise InputValueError(f'kind: expected "gaussian", got {kind!r}')
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
            raise InputTypeError(f"sigma: expected a number, got {describe(sigma)}")
        if not np.isfinite(float(sigma)) or float(sigma) <= 0:
            raise InputValueError(f"sigma: expected a finite number > 0, got {float(sigma)}")
        masks = self.masks.cpu()
        weights = torch.zeros(masks.shape, dtype=torch.float32)
        for r, mask in enumerate(masks):
            rows = torch.nonzero(mask.any(dim=1)).flatten()
            cols = torch.nonzero(mask.any(dim=0)).flatten()
            top, bottom = int(rows[0]), int(rows[-1]) + 1
            left, right = int(cols[0]), int(cols[-1]) + 1
            bump = _gaussian_bump((bottom - top, right - left), float(sigma))
            weights[r, top:bottom, left:right] = bump * mask[top:bottom, left:right]
        weights = weights.to(self.masks.device)
        return Regions(weights > 0, self.ids, weights)

    def label_map(self) -> Tensor:
        """The regions as an integer map, shape (H, W): each pixel holds its region's id.

        Only defined for partitions (every pixel in exactly one region); this is the
        ``feature_mask`` captum's FeatureAblation takes.

        Returns
        -------
        Tensor, shape (H, W), int64
            The id of the region that covers each pixel.

        Raises
        ------
        InputValueError
            When the regions overlap or leave gaps (not a partition).

        Examples
        --------
        >>> grid(4, 4, rows=2, cols=2).label_map()
        tensor([[1, 1, 2, 2],
                [1, 1, 2, 2],
                [3, 3, 4, 4],
                [3, 3, 4, 4]])
        """
        if not self.is_partition:
            raise InputValueError(
                "label_map: the regions must cover every pixel exactly once; these overlap or leave gaps"
            )
        id_tensor = torch.tensor(self.ids, dtype=torch.int64, device=self.masks.device)
        return (self.masks.to(torch.int64) * id_tensor[:, None, None]).sum(dim=0)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_label_map(cls, label_map: Tensor | np.ndarray, ignore: int | None = None) -> Regions:
        """Regions from an integer label map (superpixels, hand-drawn parts, captum feature_mask).

        Parameters
        ----------
        label_map : Tensor or ndarray of integers, shape (H, W) or (1, ..., 1, H, W)
            One map for all images; leading singleton dimensions are allowed, such as in
            captum's (1, 1, H, W) ``feature_mask``.
        ignore : int, optional
            An integer label that is not a region (e.g. a background label); its pixels are
            never occluded.

        Returns
        -------
        Regions
            One region per label, with ids = the distinct labels in increasing order.

        Raises
        ------
        InputTypeError
            When `label_map` is not a Tensor or ndarray, its dtype is not an integer dtype, or
            `ignore` is neither None nor an integer.
        InputValueError
            When its shape is neither (H, W) nor (1, ..., 1, H, W), or no label is left once
            `ignore` is removed.

        Examples
        --------
        >>> Regions.from_label_map(torch.tensor([[0, 0, 1], [2, 2, 1]])).ids
        (0, 1, 2)
        """
        if ignore is not None and integer_value(ignore) is None:
            raise InputTypeError(
                f"ignore: expected None or an integer label, got {describe(ignore)}"
            )
        if isinstance(label_map, np.ndarray):
            label_map = torch.from_numpy(label_map)
        if not isinstance(label_map, Tensor):
            raise InputTypeError(
                f"label_map: expected an integer Tensor or ndarray of shape (H, W), got {describe(label_map)}"
            )
        if label_map.dtype == torch.bool or label_map.is_floating_point() or label_map.is_complex():
            raise InputTypeError(
                f"label_map: expected an integer dtype, got {label_map.dtype}; "
                "convert it explicitly (e.g. label_map.long()) if the values are whole numbers"
            )
        if label_map.dim() < 2 or any(size != 1 for size in label_map.shape[:-2]):
            raise InputValueError(
                "label_map: expected shape (H, W) or (1, ..., 1, H, W) (one map shared by all "
                f"images), got shape {tuple(label_map.shape)}"
            )
        flat = label_map.reshape(label_map.shape[-2], label_map.shape[-1]).to(torch.int64)
        labels = torch.unique(flat)
        if ignore is not None:
            labels = labels[labels != integer_value(ignore)]
        if labels.numel() == 0:
            raise InputValueError("label_map: no region labels left (every pixel is ignored)")
        masks = flat.unsqueeze(0) == labels[:, None, None]
        return cls(masks, tuple(int(v) for v in labels.tolist()))


def _check_weights(weights: object, masks: Tensor) -> None:
    """Refuse soft-region weights that are not floats in [0, 1] positive exactly on `masks`."""
    if not isinstance(weights, Tensor) or not weights.is_floating_point():
        raise InputTypeError(
            f"Regions.weights: expected a floating Tensor of shape {tuple(masks.shape)}, "
            f"got {describe(weights)}"
        )
    if weights.shape != masks.shape:
        raise InputValueError(
            f"Regions.weights: expected shape {tuple(masks.shape)} (the masks'), "
            f"got {tuple(weights.shape)}"
        )
    if not bool(((weights >= 0) & (weights <= 1)).all()):
        raise InputValueError("Regions.weights: expected values in [0, 1] (NaN is refused)")
    if not torch.equal(weights.to(masks.device) > 0, masks):
        raise InputValueError(
            "Regions.weights: expected weights > 0 exactly on the masks (the support)"
        )


def _erf_kernel(sigma: float, length: int, centre: int) -> Tensor:
    """MONAI's ``gaussian_1d(approx="erf", truncated=4.0)`` at offsets ``i - centre`` for
    i in [0, length), zero beyond its tail: float32 as MONAI computes it."""
    tail = int(max(sigma * 4.0, 0.5) + 0.5)
    offsets = torch.arange(length, dtype=torch.float32) - centre
    scale = 0.70710678 / torch.tensor(sigma, dtype=torch.float32)
    values = 0.5 * (torch.erf(scale * (offsets + 0.5)) - torch.erf(scale * (offsets - 0.5)))
    return torch.where(offsets.abs() <= tail, values.clamp(min=0), torch.zeros_like(values))


def _gaussian_bump(size: tuple[int, ...], sigma: float) -> Tensor:
    """MONAI's "gaussian" occlusion weight (1 - its multiplier) over a box of `size`."""
    bump = torch.ones(size, dtype=torch.float32)
    for axis, length in enumerate(size):
        kernel = _erf_kernel(sigma * length, length, length // 2)
        shape = [1] * len(size)
        shape[axis] = length
        bump = bump * kernel.reshape(shape)
    low, high = bump.min(), bump.max()
    if float(high - low) == 0.0:
        return torch.ones(size, dtype=torch.float32)
    return (bump - low) / (high - low)


# The most mask elements (bools: bytes) `grid` and `sliding_windows` allocate: 4 GiB. More is
# refused before allocating (grid(10**6, 10**6, 1, 1) would be 1 TB).
MAX_MASK_ELEMENTS = 2**32


def _check_mask_size(regions: int, height: int, width: int) -> None:
    elements = regions * height * width
    if elements > MAX_MASK_ELEMENTS:
        raise InputValueError(
            f"height, width: {regions} regions of {height}x{width} pixels need "
            f"{elements / 2**30:.4g} GiB of masks (at most {MAX_MASK_ELEMENTS / 2**30:.0f} GiB); "
            "use smaller images, fewer regions, or Regions.from_label_map for a partition"
        )


def mask_digest(masks: Tensor) -> str:
    """A digest of bool masks' shape and bits, packed 8 to a byte first (2,809 sliding
    windows on 224x224 are 141 MB of bools; packed, they hash about 6x faster).

    >>> mask_digest(grid(4, 4, 2, 2).masks) == mask_digest(grid(4, 4, 2, 2).masks.clone())
    True
    """
    host = masks.detach().cpu().contiguous().numpy()
    return hashlib.sha1(str(host.shape).encode() + np.packbits(host).tobytes()).hexdigest()


def _id_summary(ids: Sequence[int]) -> str:
    if len(ids) > 1 and list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    return str(list(ids))


def _cuts(size: int, parts: int) -> list[int]:
    # floor(i * size / parts): parts differ by at most one pixel and tile [0, size) exactly.
    return [i * size // parts for i in range(parts + 1)]


def grid(height: int, width: int, rows: int = 4, cols: int = 4) -> Regions:
    """Split an image of size height x width into a rows x cols grid.

    Cells are numbered 1..rows*cols row-major (left to right, top to bottom), as the paper
    numbers its 16 areas (6 and 7 hold the eyes, 10 and 11 the mouth of an aligned face).
    Sizes that do not divide evenly give cells whose sizes differ by at most one pixel; every
    pixel belongs to exactly one cell.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    rows, cols : int, default 4
        Number of grid rows and columns, at most `height` and `width`.

    Returns
    -------
    Regions
        A partition with masks of shape (rows * cols, height, width) and ids 1..rows*cols.

    Raises
    ------
    InputTypeError
        When a size is not an int.
    InputValueError
        When a size is not positive, ``rows > height`` or ``cols > width``.

    Examples
    --------
    >>> r = grid(50, 47, rows=4, cols=4)
    >>> bool((r.coverage == 1).all()), len(r)
    (True, 16)
    """
    height = _positive_int("height", height)
    width = _positive_int("width", width)
    rows = _positive_int("rows", rows)
    cols = _positive_int("cols", cols)
    if rows > height:
        raise InputValueError(f"rows: expected at most height={height} rows, got {rows}")
    if cols > width:
        raise InputValueError(f"cols: expected at most width={width} columns, got {cols}")
    _check_mask_size(rows * cols, height, width)
    row_cuts, col_cuts = _cuts(height, rows), _cuts(width, cols)
    row_index = torch.bucketize(torch.arange(height), torch.tensor(row_cuts[1:-1]), right=True)
    col_index = torch.bucketize(torch.arange(width), torch.tensor(col_cuts[1:-1]), right=True)
    cell = row_index[:, None] * cols + col_index[None, :]
    masks = cell.unsqueeze(0) == torch.arange(rows * cols)[:, None, None]
    return Regions(masks, tuple(range(1, rows * cols + 1)))


def sliding_windows(
    height: int,
    width: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
) -> Regions:
    """Rectangular windows slid over the image; they overlap when stride < window.

    Windows start at 0, stride, 2*stride, ... and stay inside the image; pixels past the last
    window are not covered (see ``Regions.coverage``). Ids are 1..R row-major. captum's
    ``Occlusion`` places the same windows when ``size - window`` is a multiple of the stride
    along each axis; otherwise it adds a last window cut at the border (captum 0.9), which
    this function does not make.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    window : int or (int, int)
        Window size: one int for a square, or a pair (height, width); at most the image size.
    stride : int or (int, int)
        Step between window starts: one int for both axes, or a pair (height, width).

    Returns
    -------
    Regions
        Masks of shape (R, height, width), ids 1..R row-major.

    Raises
    ------
    InputTypeError
        When a size is not an int (or a pair of ints).
    InputValueError
        When a size is not positive, a pair does not have two entries, the window is larger
        than the image, the stride larger than the window (pixels between windows would never
        be occluded), or the masks would exceed 4 GiB.

    Examples
    --------
    >>> sliding_windows(8, 8, window=4, stride=2).masks.shape
    torch.Size([9, 8, 8])
    """
    height = _positive_int("height", height)
    width = _positive_int("width", width)
    window_h, window_w = _pair("window", window)
    stride_h, stride_w = _pair("stride", stride)
    if window_h > height or window_w > width:
        raise InputValueError(
            f"window: expected at most the image size ({height}, {width}), got ({window_h}, {window_w})"
        )
    if stride_h > window_h or stride_w > window_w:
        raise InputValueError(
            f"stride: ({stride_h}, {stride_w}) is larger than the window ({window_h}, "
            f"{window_w}), so pixels between windows would never be occluded (their heat map "
            "would read 0); use a stride of at most the window"
        )
    tops = torch.arange(0, height - window_h + 1, stride_h)
    lefts = torch.arange(0, width - window_w + 1, stride_w)
    _check_mask_size(int(tops.numel() * lefts.numel()), height, width)
    rows_in = (torch.arange(height)[None, :] >= tops[:, None]) & (
        torch.arange(height)[None, :] < tops[:, None] + window_h
    )
    cols_in = (torch.arange(width)[None, :] >= lefts[:, None]) & (
        torch.arange(width)[None, :] < lefts[:, None] + window_w
    )
    masks = (rows_in[:, None, :, None] & cols_in[None, :, None, :]).reshape(-1, height, width)
    return Regions(masks, tuple(range(1, masks.shape[0] + 1)))
