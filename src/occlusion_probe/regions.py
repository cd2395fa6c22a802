"""Regions of an image: which pixels each occlusion covers.

A `Regions` object holds boolean masks of shape (R, *spatial) and the integer id of each
mask, with 1, 2 or 3 spatial axes: signals (R, L), images (R, H, W), volumes (R, D, H, W).
The regions fix the rank of a sweep: images with ``regions.ndim + 2`` dims are
(N, C, *spatial), with ``regions.ndim + 1`` one channel without its axis.

`grid` numbers the cells of a grid 1..R row-major (the last axis fastest), as the paper
numbers its 16 areas; `Regions.from_label_map` turns any integer map (superpixels, captum's
``feature_mask``) into regions; `sliding_windows` makes (possibly overlapping) windows.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from .data import check_tensor_layout, from_numpy
from .errors import InputTypeError, InputValueError, describe
from .geometry import (
    MAX_RANK,
    WindowGrid,
    bounding_box,
    check_mask_size,
    cuts,
    gaussian_bump,
    per_axis,
    positive_int,
    spatial_shape,
    window_grid,
)
from .selection import integer_value

__all__ = ["Regions", "WindowGrid", "grid", "mask_digest", "sliding_windows"]

_SHAPES = "(R, L), (R, H, W) or (R, D, H, W)"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# unsigned dtypes whose values can exceed int64 (torch.uint64; uint32 always fits)
_UNSIGNED_WIDE = tuple(getattr(torch, name) for name in ("uint64",) if hasattr(torch, name))


@dataclass(frozen=True, eq=False)
class Regions:
    """Boolean masks of the regions to occlude, with their ids.

    Parameters
    ----------
    masks : Tensor, shape (R, *spatial), dtype bool
        ``masks[r]`` is True on the pixels region ``ids[r]`` covers, with 1, 2 or 3 spatial
        axes: (R, L) for signals, (R, H, W) for images, (R, D, H, W) for volumes. Every region
        must cover at least one pixel. Regions may overlap (e.g. `sliding_windows`).
    ids : tuple of int, length R
        Distinct integer region ids, in the order of ``masks`` (floats and bools are refused).
    weights : Tensor, shape (R, *spatial), floating, optional
        Soft regions (`soften`): the weight w in [0, 1] of each pixel, positive exactly on
        ``masks`` (the support). An occluded pixel is ``x * (1 - w) + fill * w``, and heat
        maps weight each pixel's regions by w. None (the default): hard regions, w = 1.

    Raises
    ------
    InputTypeError
        When ``masks`` is not a Tensor, or ``ids`` is not a sequence of integers.
    InputValueError
        When ``masks`` is not a bool tensor of shape (R, *spatial) with 1 to 3 spatial axes, R is 0, the number of ids
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
    >>> volume = grid((32, 32, 32), 2)
    >>> volume.ndim, volume.spatial_shape, len(volume)
    (3, (32, 32, 32), 8)
    """

    masks: Tensor
    ids: tuple[int, ...]
    weights: Tensor | None = None
    _digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        masks = self.masks
        if not isinstance(masks, Tensor):
            raise InputTypeError(
                f"Regions.masks: expected a bool torch.Tensor of shape {_SHAPES}, got {describe(masks)}"
            )
        check_tensor_layout("Regions.masks", masks)
        if masks.dtype != torch.bool or not 2 <= masks.dim() <= MAX_RANK + 1:
            raise InputValueError(
                f"Regions.masks: expected a bool tensor of shape {_SHAPES}, got {describe(masks)}"
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
        too_large = [i for i in ids if not _INT64_MIN <= i <= _INT64_MAX]
        if too_large:
            # result files and label maps store ids as int64; 2**64 would fail only in save
            raise InputValueError(
                f"Regions.ids: expected ids in int64 range [-2**63, 2**63 - 1], got {too_large[:5]}"
            )
        if len(ids) != masks.shape[0]:
            raise InputValueError(
                f"Regions.ids: expected {masks.shape[0]} ids (one per mask), got {len(ids)}"
            )
        if len(set(ids)) != len(ids):
            raise InputValueError(f"Regions.ids: expected distinct ids, got {ids}")
        # a max over the bools' bytes: a sum of 141 MB of masks takes a hundred times longer
        covered = masks.flatten(1).view(torch.uint8).amax(dim=1)
        empty = [ids[r] for r in torch.nonzero(covered == 0).flatten().tolist()]
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
        size = "x".join(str(s) for s in self.spatial_shape)
        return f"Regions({len(self)} {kind} of {size}, ids {self.ids[0]}..{self.ids[-1]})"

    @property
    def ndim(self) -> int:
        """The number of spatial axes: 1 (signals), 2 (images) or 3 (volumes)."""
        return self.masks.dim() - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The spatial size the masks cover: (L,), (H, W) or (D, H, W)."""
        return tuple(int(s) for s in self.masks.shape[1:])

    @property
    def height(self) -> int:
        """H, the image height the masks cover (2D regions only)."""
        return self._plane_size(0, "height")

    @property
    def width(self) -> int:
        """W, the image width the masks cover (2D regions only)."""
        return self._plane_size(1, "width")

    def _plane_size(self, axis: int, name: str) -> int:
        if self.ndim != 2:
            raise InputValueError(
                f"Regions.{name}: defined for 2D regions, these have {self.ndim} spatial axes "
                f"{self.spatial_shape}; use spatial_shape"
            )
        return self.spatial_shape[axis]

    @property
    def coverage(self) -> Tensor:
        """How many regions cover each pixel: Tensor, shape (*spatial), int64."""
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
        Tensor, shape (..., *spatial)
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
        flat = values @ masks.flatten(1)
        mean = flat.reshape(*flat.shape[:-1], *self.spatial_shape)
        return mean / coverage

    def window_grid(self) -> WindowGrid | None:
        """The window geometry when the regions are sliding windows, else None.

        The regions qualify when every mask is a filled box of one size, their first corners
        form a regular lattice (equal steps along each axis) and the masks are in row-major
        order of that lattice, as `sliding_windows` makes them. Nothing is
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
        >>> sliding_windows((16,), window=4, stride=2).window_grid().starts
        ((0, 2, 4, 6, 8, 10, 12),)
        >>> Regions.from_label_map(torch.tensor([[0, 1, 1]])).window_grid() is None
        True
        """
        return window_grid(self.masks)

    # -- selection ----------------------------------------------------------------------------
    def positions(self, ids: Iterable[int], name: str = "ids") -> list[int]:
        """Positions (0-based indices into ``masks``) of the given region ids, in that order.

        Parameters
        ----------
        ids : iterable of int
            Region ids (ints, numpy integers or 0-d integer tensors); a single int is taken
            as one id.
        name : str, default "ids"
            The argument the errors name (e.g. ``"keep"`` for `keep_only`'s ids).

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
            raise InputTypeError(f"{name}: expected integer region ids, got {describe(ids)}")
        given = list(ids)
        bad_type = [i for i in given if integer_value(i) is None]
        if bad_type:
            raise InputTypeError(f"{name}: expected integer region ids, got {bad_type!r}")
        wanted = [int(i) for i in given]
        lookup = {region_id: position for position, region_id in enumerate(self.ids)}
        unknown = [i for i in wanted if i not in lookup]
        if unknown:
            raise InputValueError(
                f"{name}: unknown region ids {unknown}; valid ids are {_id_summary(self.ids)}"
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
        Tensor, shape (*spatial), bool
            True on the pixels that at least one of the regions covers.
        """
        if ids is None:
            return self.masks.any(dim=0)
        positions = self.positions(ids)
        if not positions:
            return torch.zeros(self.spatial_shape, dtype=torch.bool, device=self.masks.device)
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

        Raises
        ------
        InputTypeError
            When `device` is neither a str nor a torch.device.
        InputValueError
            When `device` names no device this machine has, or the meta device (which holds
            no mask values).
        """
        if not isinstance(device, (str, torch.device)):
            raise InputTypeError(
                f"device: expected a torch.device or a str such as 'cpu' or 'cuda:0', got "
                f"{describe(device)}"
            )
        try:
            target = torch.device(device)
            torch.empty(0, device=target)
        except (RuntimeError, AssertionError) as error:
            raise InputValueError(
                f"device: expected a device this machine has, got {str(device)!r} ({error})"
            ) from None
        if target.type == "meta":
            raise InputValueError(
                "device: got the meta device, which holds no values; regions need their masks"
            )
        weights = None if self.weights is None else self.weights.to(device)
        return Regions(self.masks.to(device), self.ids, weights)

    def soften(self, kind: str = "gaussian", sigma: float = 0.25) -> Regions:
        """Soft regions: each pixel weighted by a bump over its region's bounding box (any rank).

        ``"gaussian"`` is MONAI's ``OcclusionSensitivity(mode="gaussian")`` kernel: a 1 at
        the box's centre pixel (index ``size // 2`` along each axis) smoothed by MONAI's
        Gaussian (erf-integrated, truncated at 4 standard deviations, zero outside) of
        standard deviation ``sigma * size`` pixels per axis, then scaled to [0, 1]. The
        weight is 1 at the centre and 0 where the bump is lowest (the box's corners), so
        with fill 0 an occluded pixel ``x * (1 - w)`` is MONAI's ``x * (1 - gaussian)``. A
        region that is not a box gets its box's bump on its own pixels. Pixels of
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
            box: tuple[slice, ...] = tuple(slice(a, b) for a, b in bounding_box(mask))
            bump = gaussian_bump(tuple(b.stop - b.start for b in box), float(sigma))
            weights[r][box] = bump * mask[box]
        weights = weights.to(self.masks.device)
        return Regions(weights > 0, self.ids, weights)

    def label_map(self) -> Tensor:
        """The regions as an integer map, shape (*spatial): each pixel holds its region's id.

        Only defined for partitions (every pixel in exactly one region); this is the
        ``feature_mask`` captum's FeatureAblation takes.

        Returns
        -------
        Tensor, shape (*spatial), int64
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
        id_tensor = id_tensor.reshape(-1, *([1] * self.ndim))
        return (self.masks.to(torch.int64) * id_tensor).sum(dim=0)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_label_map(
        cls,
        label_map: Tensor | np.ndarray,
        ignore: int | None = None,
        ndim: int | None = None,
    ) -> Regions:
        """Regions from an integer label map of any rank (superpixels, supervoxels, segments
        of a signal, hand-drawn parts, captum's ``feature_mask``).

        Parameters
        ----------
        label_map : Tensor or ndarray of integers, shape (*spatial) or (1, ..., 1, *spatial)
            One map for all images. Leading singleton dimensions are dropped (captum's
            (1, 1, H, W) ``feature_mask`` is an (H, W) map) down to `ndim` spatial axes, or,
            when `ndim` is None, down to 2: an (L,) map is 1D, an (H, W) or (1, ..., 1, H, W)
            map 2D and a (D, H, W) map with D > 1 3D.
        ignore : int, optional
            An integer label that is not a region (e.g. a background label); its pixels are
            never occluded.
        ndim : int, optional
            The number of spatial axes, 1 to 3, when the rule above would read the map
            otherwise (e.g. ``ndim=3`` for a (1, H, W) volume of depth 1, ``ndim=1`` for a
            (1, L) signal map).

        Returns
        -------
        Regions
            One region per label, with ids = the distinct labels in increasing order.

        Raises
        ------
        InputTypeError
            When `label_map` is not a Tensor or ndarray, its dtype is not an integer dtype,
            it is sparse, a numpy masked or object array, `ignore` is neither None nor an
            integer, or `ndim` is not an int.
        InputValueError
            When `ndim` is not 1, 2 or 3, the map has more than `ndim` (or 3) axes that are
            not leading singletons, fewer than `ndim`, no pixels, a label outside int64
            (a uint64 map), or no label is left once `ignore` is removed; when it is on the
            meta device.

        Examples
        --------
        >>> Regions.from_label_map(torch.tensor([[0, 0, 1], [2, 2, 1]])).ids
        (0, 1, 2)
        >>> Regions.from_label_map(torch.tensor([0, 0, 1, 1, 1])).spatial_shape
        (5,)
        >>> Regions.from_label_map(torch.zeros(1, 4, 4, dtype=torch.long), ndim=3).spatial_shape
        (1, 4, 4)
        """
        if ignore is not None and integer_value(ignore) is None:
            raise InputTypeError(
                f"ignore: expected None or an integer label, got {describe(ignore)}"
            )
        if ndim is not None:
            if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)):
                raise InputTypeError(f"ndim: expected None or an int 1..3, got {describe(ndim)}")
            if not 1 <= ndim <= MAX_RANK:
                raise InputValueError(f"ndim: expected 1, 2 or 3 spatial axes, got {ndim}")
        ignored = None if ignore is None else integer_value(ignore)
        if ignored is not None and not _INT64_MIN <= ignored <= _INT64_MAX:
            raise InputValueError(f"ignore: expected a label in int64 range, got {ignored}")
        if isinstance(label_map, np.ndarray):
            label_map = from_numpy("label_map", label_map)
        if not isinstance(label_map, Tensor):
            raise InputTypeError(
                "label_map: expected an integer Tensor or ndarray of shape (*spatial), got "
                f"{describe(label_map)}"
            )
        check_tensor_layout("label_map", label_map)
        if label_map.dtype == torch.bool or label_map.is_floating_point() or label_map.is_complex():
            raise InputTypeError(
                f"label_map: expected an integer dtype, got {label_map.dtype}; "
                "convert it explicitly (e.g. label_map.long()) if the values are whole numbers"
            )
        spatial = _spatial_map(label_map, ndim)
        if spatial.numel() == 0:
            raise InputValueError(
                f"label_map: expected at least one pixel, got shape {tuple(label_map.shape)}"
            )
        if spatial.dtype in _UNSIGNED_WIDE:
            # the same bits as int64: labels above 2**63 - 1 read negative (a cast would wrap
            # 2**63 + 5 to a negative id silently)
            flat = spatial.contiguous().view(torch.int64)
            if bool((flat < 0).any()):
                raise InputValueError(
                    f"label_map: expected labels in int64 range, got {spatial.dtype} labels "
                    f"up to {int(flat[flat < 0].max()) + 2**64} > 2**63 - 1; relabel the map "
                    "(e.g. by each label's rank among the distinct labels)"
                )
        else:
            flat = spatial.to(torch.int64)
        labels = torch.unique(flat)
        if ignored is not None:
            labels = labels[labels != ignored]
        if labels.numel() == 0:
            raise InputValueError("label_map: no region labels left (every pixel is ignored)")
        check_mask_size(int(labels.numel()), tuple(flat.shape), "label_map")
        masks = flat.unsqueeze(0) == labels.reshape(-1, *([1] * flat.dim()))
        return cls(masks, tuple(int(v) for v in labels.tolist()))


def _spatial_map(label_map: Tensor, ndim: int | None) -> Tensor:
    """`label_map` without its leading singleton dims, `ndim` (or 1 to 3) axes left."""
    shape = tuple(label_map.shape)
    keep = len(shape)
    floor = 2 if ndim is None else ndim
    while keep > floor and shape[len(shape) - keep] == 1:
        keep -= 1
    wanted = "1 to 3" if ndim is None else str(ndim)
    if keep == 0 or keep > MAX_RANK or (ndim is not None and keep != ndim):
        raise InputValueError(
            f"label_map: expected {wanted} spatial axes (after leading singleton dims), as "
            f"(L,), (H, W), (D, H, W) or captum's (1, 1, H, W), got shape {shape}"
        )
    return label_map.reshape(shape[len(shape) - keep :])


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


def _grid_2d(height: int, width: int, rows: int = 4, cols: int = 4) -> None:
    """The 2D form of `grid`'s arguments."""


def _grid_nd(shape: Sequence[int], cells: int | Sequence[int] = 4) -> None:
    """The any-rank form of `grid`'s arguments."""


def _windows_2d(
    height: int,
    width: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    box: Sequence[tuple[int, int]] | None = None,
) -> None:
    """The 2D form of `sliding_windows`'s arguments."""


def _windows_nd(
    shape: Sequence[int],
    window: int | Sequence[int],
    stride: int | Sequence[int],
    *,
    box: Sequence[tuple[int, int]] | None = None,
) -> None:
    """The any-rank form of `sliding_windows`'s arguments."""


def _call(
    leading: tuple[Any, ...], keywords: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call as positional arguments (the leading ones given, in order) and keywords
    (those given), so that `_bind` reads it in whichever form it was written."""
    names = ("height", "width", "window", "stride")[: len(leading)]
    args: list[Any] = []
    kwargs = {name: value for name, value in keywords.items() if value is not None}
    for name, value in zip(names, leading, strict=True):
        if value is None:
            continue
        if len(args) == names.index(name):
            args.append(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs


def _bind(
    function: str, forms: tuple[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, dict[str, Any]]:
    """Which form the call uses (True: any rank, by a sequence as the first argument or a
    ``shape=`` keyword) and its arguments by name, defaults applied."""
    if args and isinstance(args[0], (Tensor, np.ndarray)) and args[0].ndim >= 1:
        # a shape held in an array reads as neither form (the 2D form would call it `height`)
        raise InputTypeError(
            f"shape: {function} expected a tuple of 1 to {MAX_RANK} ints, got "
            f"{describe(args[0])}; pass tuple(shape.tolist())"
        )
    any_rank = "shape" in kwargs or bool(args and isinstance(args[0], (tuple, list, torch.Size)))
    signature = inspect.signature(forms[any_rank])
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        plain = [
            p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()
        ]
        form = inspect.Signature(plain)
        raise InputTypeError(f"{function}{form}: {error}") from None
    bound.apply_defaults()
    return any_rank, dict(bound.arguments)


@overload
def grid(height: int, width: int, rows: int = 4, cols: int = 4) -> Regions: ...


@overload
def grid(shape: Sequence[int], cells: int | Sequence[int] = 4) -> Regions: ...


# One signature names every parameter of both forms (the docs list them): the any-rank
# form's first two arguments arrive as height and width when given by position.
def grid(  # type: ignore[misc]
    height: Any = None,
    width: Any = None,
    rows: Any = None,
    cols: Any = None,
    *,
    shape: Any = None,
    cells: Any = None,
) -> Regions:
    """Split an image, signal or volume into a grid of cells.

    Two forms:

    - ``grid(height, width, rows=4, cols=4)``: a 2D image of height x width pixels in rows x
      cols cells;
    - ``grid(shape, cells=4)``: any rank, with `shape` the spatial size, (L,), (H, W) or
      (D, H, W), and `cells` the number of cells along each axis (one int for every axis).

    Cells are numbered 1..R row-major (the last axis fastest), as the paper numbers its 16
    areas (6 and 7 hold the eyes, 10 and 11 the mouth of an aligned face). Sizes that do not
    divide evenly give cells whose sizes differ by at most one pixel along each axis; every
    pixel belongs to exactly one cell.

    Parameters
    ----------
    height, width : int
        Image size in pixels (2D form).
    rows, cols : int, default 4
        Number of grid rows and columns, at most `height` and `width` (2D form).
    shape : tuple of 1 to 3 int
        Spatial size (any-rank form).
    cells : int or tuple of int, default 4
        Cells along each axis, at most the size along that axis (any-rank form).

    Returns
    -------
    Regions
        A partition with masks of shape (R, *spatial) and ids 1..R.

    Raises
    ------
    InputTypeError
        When a size is not an int, or the arguments fit neither form.
    InputValueError
        When a size is not positive, more cells than pixels are asked along an axis, a
        tuple's length differs from the rank, or the masks would exceed 4 GiB.

    Examples
    --------
    >>> r = grid(50, 47, rows=4, cols=4)
    >>> bool((r.coverage == 1).all()), len(r)
    (True, 16)
    >>> tuple(grid((64, 64, 64), (2, 4, 4)).masks.shape)
    (32, 64, 64, 64)
    >>> grid((10,), 5).label_map()
    tensor([1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    """
    args, kwargs = _call(
        (height, width), {"rows": rows, "cols": cols, "shape": shape, "cells": cells}
    )
    any_rank, arguments = _bind("grid", (_grid_2d, _grid_nd), args, kwargs)
    if any_rank:
        shape = spatial_shape("shape", arguments["shape"])
        cells = per_axis("cells", arguments["cells"], len(shape))
        names = [(f"cells[{axis}]", f"shape[{axis}]", "cells") for axis in range(len(shape))]
    else:
        shape = (
            positive_int("height", arguments["height"]),
            positive_int("width", arguments["width"]),
        )
        cells = (positive_int("rows", arguments["rows"]), positive_int("cols", arguments["cols"]))
        names = [("rows", "height", "rows"), ("cols", "width", "columns")]
    for size, parts, (cell_name, size_name, unit) in zip(shape, cells, names, strict=True):
        if parts > size:
            raise InputValueError(
                f"{cell_name}: expected at most {size_name}={size} {unit}, got {parts}"
            )
    count = math.prod(cells)  # a Python int: np.prod wraps past 2**63 (2**120 cells read 0)
    check_mask_size(count, shape, "shape" if any_rank else "height, width")
    cell = torch.zeros(shape, dtype=torch.int64)
    for axis, (size, parts) in enumerate(zip(shape, cells, strict=True)):
        bounds = torch.tensor(cuts(size, parts)[1:-1], dtype=torch.int64)
        index = torch.bucketize(torch.arange(size), bounds, right=True)
        view = [1] * len(shape)
        view[axis] = size
        cell = cell * parts + index.reshape(view)
    masks = cell.unsqueeze(0) == torch.arange(count).reshape(-1, *([1] * len(shape)))
    return Regions(masks, tuple(range(1, count + 1)))


@overload
def sliding_windows(
    height: int,
    width: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    box: Sequence[tuple[int, int]] | None = None,
) -> Regions: ...


@overload
def sliding_windows(
    shape: Sequence[int],
    window: int | Sequence[int],
    stride: int | Sequence[int],
    *,
    box: Sequence[tuple[int, int]] | None = None,
) -> Regions: ...


def sliding_windows(  # type: ignore[misc]  # as grid: both forms in one signature
    height: Any = None,
    width: Any = None,
    window: Any = None,
    stride: Any = None,
    *,
    shape: Any = None,
    box: Any = None,
) -> Regions:
    """Box windows slid over a signal, an image or a volume; they overlap when stride < window.

    Two forms:

    - ``sliding_windows(height, width, window, stride)``: a 2D image;
    - ``sliding_windows(shape, window, stride)``: any rank, `shape` the spatial size (L,),
      (H, W) or (D, H, W).

    Along each axis windows start at 0, stride, 2*stride, ... and stay inside the input (or
    inside `box`); pixels past the last window are not covered (see ``Regions.coverage``).
    Ids are 1..R row-major (the last axis fastest). captum's ``Occlusion`` places the same
    windows when ``size - window`` is a multiple of the stride along each axis; otherwise it
    adds a last window cut at the border (captum 0.9), which this function does not make.

    Parameters
    ----------
    height, width : int
        Image size in pixels (2D form).
    shape : tuple of 1 to 3 int
        Spatial size (any-rank form).
    window : int or tuple of int
        Window size: one int for every axis, or one per axis; at most the input (or box) size.
    stride : int or tuple of int
        Step between window starts: one int for every axis, or one per axis; at most the
        window.
    box : sequence of (start, stop) per axis, optional (keyword)
        Only place windows inside this half-open box, as MONAI's ``b_box`` limits its
        analysis; the masks keep the full spatial size and pixels outside the box are never
        occluded. None (the default): the whole input.

    Returns
    -------
    Regions
        Masks of shape (R, *spatial), ids 1..R.

    Raises
    ------
    InputTypeError
        When a size is not an int, or the arguments fit neither form.
    InputValueError
        When a size is not positive, a tuple's length differs from the rank, the window is
        larger than the input or the box, the stride larger than the window (pixels between
        windows would never be occluded), the box is empty or leaves the input, or the masks
        would exceed 4 GiB.

    Examples
    --------
    >>> sliding_windows(8, 8, window=4, stride=2).masks.shape
    torch.Size([9, 8, 8])
    >>> len(sliding_windows((64, 64, 64), window=16, stride=8))
    343
    >>> len(sliding_windows((32, 32, 32), window=8, stride=8, box=((8, 24), (0, 32), (0, 32))))
    32
    """
    args, kwargs = _call((height, width, window, stride), {"shape": shape, "box": box})
    any_rank, arguments = _bind("sliding_windows", (_windows_2d, _windows_nd), args, kwargs)
    if any_rank:
        shape = spatial_shape("shape", arguments["shape"])
    else:
        shape = (
            positive_int("height", arguments["height"]),
            positive_int("width", arguments["width"]),
        )
    rank = len(shape)
    window = per_axis("window", arguments["window"], rank)
    stride = per_axis("stride", arguments["stride"], rank)
    box = _window_box(arguments["box"], shape)
    extent = tuple(stop - start for start, stop in box)
    if any(w > e for w, e in zip(window, extent, strict=True)):
        where = "the box" if arguments["box"] is not None else "the input"
        raise InputValueError(
            f"window: expected at most the size of {where} {extent}, got {window}"
        )
    if any(s > w for s, w in zip(stride, window, strict=True)):
        raise InputValueError(
            f"stride: {stride} is larger than the window {window}, so pixels between windows "
            "would never be occluded (their heat map would read 0); use a stride of at most "
            "the window"
        )
    # counted before any allocation: along one axis alone, 2**17 windows of a 2**17-sample
    # signal are 16 GiB of bools
    counts = [
        len(range(start, stop - w + 1, step))
        for w, step, (start, stop) in zip(window, stride, box, strict=True)
    ]
    check_mask_size(math.prod(counts), shape, "shape" if any_rank else "height, width")
    inside = []
    for size, w, step, (start, stop) in zip(shape, window, stride, box, strict=True):
        starts = torch.arange(start, stop - w + 1, step)
        positions = torch.arange(size)
        inside.append((positions >= starts[:, None]) & (positions < starts[:, None] + w))
    masks = inside[0]
    for axis_inside in inside[1:]:
        # every earlier window times every position along the next axis (row-major)
        earlier = masks.reshape(masks.shape[0], 1, *masks.shape[1:], 1)
        along = axis_inside.reshape(1, axis_inside.shape[0], *([1] * (masks.dim() - 1)), -1)
        masks = (earlier & along).reshape(-1, *masks.shape[1:], axis_inside.shape[1])
    return Regions(masks, tuple(range(1, masks.shape[0] + 1)))


def _window_box(box: object, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """`box` as one half-open (start, stop) per axis inside `shape` (the whole input if None)."""
    if box is None:
        return tuple((0, size) for size in shape)
    expected = f"{len(shape)} (start, stop) pairs, one per spatial axis"
    if not isinstance(box, (tuple, list)) or len(box) != len(shape):
        raise InputValueError(f"box: expected {expected}, got {box!r}")
    pairs = []
    for axis, (pair, size) in enumerate(zip(box, shape, strict=True)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputValueError(f"box[{axis}]: expected a (start, stop) pair, got {pair!r}")
        start, stop = pair
        for value in (start, stop):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputTypeError(f"box[{axis}]: expected int bounds, got {describe(value)}")
        if not 0 <= start < stop <= size:
            raise InputValueError(
                f"box[{axis}]: expected 0 <= start < stop <= {size} (half-open, inside the "
                f"input), got ({start}, {stop})"
            )
        pairs.append((int(start), int(stop)))
    return tuple(pairs)
