"""Fill specifications: what an occluded pixel is set to.

A fill is one of

* a number: every occluded pixel gets that value (the paper's 0.0, 0.2, ..., 1.0);
* a tensor broadcastable to one image (C, *spatial): e.g. the data set mean image, or a
  per-channel colour of shape (C, 1, 1) for images (C, H, W);
* a callable ``images -> fill images``: gets a batch (n, C, *spatial) and returns tensors
  broadcastable to it, e.g. a blurred copy of each image;
* a region-aware fill (`RegionFill`): gets the images and the mask of the region it fills
  and returns the values there. Built-ins: `patch_mean`, `image_mean`, `blur` and
  `linear_imputation` (ROAD's noisy linear imputation).

Every fill works at every spatial rank: signals (n, C, L), images (n, C, H, W) and volumes
(n, C, D, H, W), with masks (n or 1, *spatial).

A sweep with region-aware fills runs its regions in layers of pairwise disjoint regions
(`disjoint_layers`): each layer's fill image holds every region's own fill on its pixels
(`layer_fills`), so both engines build ``torch.where(masks[r], fill_images[v, i], images[i])``
as for any other fill.

Examples
--------
>>> import torch, occlusion_probe as op
>>> result = op.sweep(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),
...                   torch.rand(2, 1, 8, 8), op.sliding_windows(8, 8, window=4, stride=2),
...                   fills=[0.0, op.fills.patch_mean(), op.fills.linear_imputation()],
...                   progress=False)
>>> result.fill_labels
('0.0', 'patch_mean', 'linear_imputation(noise=0.01, seed=0)')
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor
from typing_extensions import Protocol, runtime_checkable

from .data import check_tensor_layout
from .errors import (
    InputTypeError,
    InputValueError,
    OcclusionProbeWarning,
    check_one_argument_callable,
    describe,
)
from .imputation import LinearImputation, linear_imputation
from .region_fills import Blur, ImageMean, PatchMean, RegionFill, blur, image_mean, patch_mean

__all__ = [
    "Blur",
    "Fill",
    "FillFunction",
    "FillSpec",
    "ImageMean",
    "LinearImputation",
    "PatchMean",
    "RegionFill",
    "blur",
    "check_fills_fit",
    "disjoint_layers",
    "fill_for_masks",
    "image_mean",
    "layer_fills",
    "linear_imputation",
    "needs_layers",
    "patch_mean",
    "resolve_fills",
    "stack_fills",
    "warn_if_outside",
]

# A constant fill more than 1.5 "image scales" (the larger of the range's width and its
# largest magnitude) outside [min, max] is probably a unit mistake, e.g. 128 on [0, 1]
# pixels. Fills just outside the range (0.0 on images in [0.9, 1], or -1 as a marker) are
# common on purpose and stay silent.
_RANGE_SLACK = 1.5


@runtime_checkable
class FillFunction(Protocol):
    """A callable that makes fill images from a batch: (n, C, *spatial) -> broadcastable to
    it."""

    def __call__(self, images: Tensor, /) -> Tensor: ...


FillSpec: TypeAlias = float | int | Tensor | FillFunction | RegionFill


@dataclass(frozen=True, eq=False)
class Fill:
    """One resolved fill: a constant, a fixed tensor, a function of the images, or a
    region-aware fill.

    Exactly one of ``value``, ``tensor``, ``function`` and ``region`` is set.
    """

    label: str
    value: float | None = None
    tensor: Tensor | None = None
    function: FillFunction | None = None
    region: RegionFill | None = None

    def for_batch(self, images: Tensor) -> Tensor:
        """The fill for a batch of images (n, C, *spatial), as a tensor broadcastable to it
        (not for region-aware fills: see `fill_for_masks` and `layer_fills`)."""
        if self.region is not None:
            raise RuntimeError(f"fill {self.label!r} needs the region's mask")
        if self.value is not None:
            # one entry per axis of the batch (n, C, *spatial): broadcast, never materialised
            shape = (1,) * images.dim()
            return torch.full(shape, self.value, dtype=images.dtype, device=images.device)
        if self.tensor is not None:
            return _full_rank(self.tensor.to(device=images.device, dtype=images.dtype), images)
        if self.function is None:  # unreachable by construction; keeps the type checker honest
            raise InputValueError(f"fill {self.label!r}: has neither value, tensor nor function")
        # A copy: a callable that writes into its input must not change the caller's images.
        made = self.function(images.clone())
        if not isinstance(made, Tensor) or not made.is_floating_point():
            raise InputTypeError(
                f"fills: the callable {self.label!r} must return a floating-point Tensor "
                f"(as fill tensors must be), got {describe(made)}"
            )
        try:
            _broadcast_shapes(made.shape, images.shape)
        except RuntimeError as error:
            raise InputValueError(
                f"fills: the callable {self.label!r} returned shape {tuple(made.shape)}, "
                f"not broadcastable to the batch shape {tuple(images.shape)}"
            ) from error
        if _broadcast_shapes(made.shape, images.shape) != images.shape:
            raise InputValueError(
                f"fills: the callable {self.label!r} returned shape {tuple(made.shape)}, "
                f"which would enlarge the batch shape {tuple(images.shape)}"
            )
        made = _full_rank(made.to(device=images.device, dtype=images.dtype), images)
        if not bool(torch.isfinite(made).all()):
            finite = torch.isfinite(made.expand(images.shape).flatten(1)).all(dim=1)
            bad = torch.nonzero(~finite).flatten()[:10].tolist()
            raise InputValueError(
                f"fills: the callable {self.label!r} returned NaN or inf values (in "
                f"{images.dtype}) for images {bad} of the chunk (first offending positions); "
                "a fill must be finite"
            )
        if self not in _PER_IMAGE_CHECKED and images.shape[0] >= 2:
            _PER_IMAGE_CHECKED.add(self)
            self._check_per_image(images, made)
        return made

    def _check_per_image(self, images: Tensor, made: Tensor) -> None:
        """Refuse a callable whose fill for an image depends on the other images of the
        batch (e.g. a batch mean): the result would depend on how images are chunked."""
        if self.function is None:
            return
        got = self.function(images[:1].clone())
        try:
            alone = got.to(device=images.device, dtype=images.dtype).expand(images[:1].shape)
        except (AttributeError, RuntimeError) as error:
            raise InputValueError(
                f"fills: the callable {self.label!r} returned {describe(got)} for a batch of "
                "one image, not a tensor broadcastable to it"
            ) from error
        together = made.expand(images.shape)[:1]
        scale = max(float(together.abs().max()), 1.0)
        if not torch.allclose(alone, together, rtol=1e-4, atol=1e-5 * scale):
            worst = float((alone - together).abs().max())
            raise InputValueError(
                f"fills: the callable {self.label!r} gives image 0 another fill alone than in "
                f"a batch of {images.shape[0]} (differing by up to {worst:.3g}); a fill callable "
                "must treat each image on its own (results would depend on how the images are "
                "split into chunks and batches)"
            )


def _full_rank(fill: Tensor, images: Tensor) -> Tensor:
    """`fill` with leading singleton axes up to the batch's number of dims: the same
    broadcast, in the (n or 1, C or 1, *spatial or 1s) form the engines index."""
    return fill.reshape((1,) * (images.dim() - fill.dim()) + tuple(fill.shape))


# Fills whose callable was checked to treat each image on its own (see Fill._check_per_image).
_PER_IMAGE_CHECKED: weakref.WeakSet[Fill] = weakref.WeakSet()


def _broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    # torch.broadcast_shapes is untyped; this typed wrapper keeps mypy --strict meaningful.
    result: torch.Size = torch.broadcast_shapes(*shapes)  # type: ignore[no-untyped-call]
    return result


def _label_of_number(value: float) -> str:
    return repr(float(value))


def resolve_fills(
    fills: Sequence[FillSpec] | FillSpec,
    image_shape: tuple[int, ...],
    argument: str = "fills",
) -> tuple[Fill, ...]:
    """Check and normalise the `fills` argument for images of shape (C, *spatial).

    A single number, tensor or callable is accepted as one fill. Raises `InputValueError`
    for an empty sequence and for tensors that do not broadcast to one image. Errors name
    ``fills[i]``; another `argument` (``"fill"`` of `keep_only`, given as ``[fill]``) is
    named as it is.
    """
    if isinstance(fills, (int, float, np.number, Tensor)) or callable(fills):
        fills = [fills]
    if isinstance(fills, (str, bytes)) or not isinstance(fills, Sequence):
        raise InputTypeError(
            f"fills: expected a sequence of numbers, tensors or callables, got {describe(fills)}"
        )
    if len(fills) == 0:
        raise InputValueError("fills: expected at least one fill value, got an empty sequence")
    resolved: list[Fill] = []
    for position, spec in enumerate(fills):
        name = f"{argument}[{position}]" if argument == "fills" else argument
        if isinstance(spec, bool):
            raise InputTypeError(f"{name}: expected a number, tensor or callable, got bool {spec}")
        if isinstance(spec, (int, float, np.integer, np.floating)):
            try:
                value = float(spec)
            except OverflowError:
                raise InputValueError(
                    f"{name}: expected a finite number, got an integer too large for a float "
                    f"({str(spec)[:20]}... with {len(str(spec))} digits)"
                ) from None
            if not np.isfinite(value):
                raise InputValueError(f"{name}: expected a finite number, got {value}")
            resolved.append(Fill(label=_label_of_number(value), value=value))
        elif isinstance(spec, Tensor):
            check_tensor_layout(name, spec)
            if spec.dtype == torch.bool or spec.is_complex():
                raise InputTypeError(
                    f"{name}: expected a real number or a floating-point tensor, got {describe(spec)}"
                )
            if spec.dim() == 0:
                # 7 significant digits: a float32 0.3 is labelled "0.3", not "0.30000001192092896".
                value = float(f"{float(spec):.7g}")
                if not np.isfinite(value):
                    raise InputValueError(f"{name}: expected a finite number, got {value}")
                resolved.append(Fill(label=_label_of_number(value), value=value))
                continue
            if not spec.is_floating_point():
                raise InputTypeError(
                    f"{name}: expected a floating-point tensor, got {describe(spec)}"
                )
            if spec.dim() == 1 and spec.shape[0] > 1:
                # (W,) broadcasts as one value per column (per position of the last axis at
                # any rank), but reads just as well as W fills.
                along = "column" if len(image_shape) == 3 else "position of the last axis"
                wanted = (1,) * (len(image_shape) - 1) + (spec.shape[0],)
                raise InputValueError(
                    f"{name}: a 1-d tensor of {spec.shape[0]} values is ambiguous (one fill per "
                    f"{along}, or several fills?); pass a list of numbers for several fills "
                    f"(fills=t.tolist()), or shape {wanted} for one per {along}"
                )
            try:
                shape = _broadcast_shapes(spec.shape, image_shape)
            except RuntimeError:
                shape = None
            if shape != torch.Size(image_shape):
                raise InputValueError(
                    f"{name}: expected a tensor broadcastable to one image of shape {image_shape}, "
                    f"got shape {tuple(spec.shape)}"
                )
            if not bool(torch.isfinite(spec).all()):
                raise InputValueError(f"{name}: the fill tensor contains NaN or inf values")
            resolved.append(Fill(label=f"tensor{position}", tensor=spec.detach()))
        elif isinstance(spec, RegionFill):
            resolved.append(Fill(label=spec.label, region=spec))
        elif callable(spec):
            check_one_argument_callable(name, spec, "a batch of images (n, C, *spatial)")
            label = getattr(spec, "__name__", type(spec).__name__)
            resolved.append(Fill(label=str(label), function=spec))
        else:
            raise InputTypeError(
                f"{name}: expected a number, tensor or callable, got {describe(spec)}"
            )
    labels = [fill.label for fill in resolved]
    if len(set(labels)) != len(labels):
        # Repeated labels would make fill lookups by label ambiguous; number them instead.
        resolved = [
            Fill(
                label=f"{fill.label}#{i}",
                value=fill.value,
                tensor=fill.tensor,
                function=fill.function,
                region=fill.region,
            )
            if labels.count(fill.label) > 1
            else fill
            for i, fill in enumerate(resolved)
        ]
    return tuple(resolved)


def check_fills_fit(fills: Sequence[Fill], dtype: torch.dtype, argument: str = "fills") -> None:
    """Refuse constant and tensor fills that overflow `dtype`, the dtype the model gets.

    Parameters
    ----------
    fills : sequence of Fill
        The resolved fills, in the order of the `fills` argument.
    dtype : torch.dtype
        The floating dtype the occluded images are built in.

    Raises
    ------
    InputValueError
        When a fill's magnitude exceeds the largest finite value of `dtype` (e.g. 1e39 for
        float32, 7e4 for float16).

    Examples
    --------
    >>> check_fills_fit(resolve_fills([0.0, 1e39], (1, 2, 2)), torch.float64)
    """
    largest = torch.finfo(dtype).max
    for position, fill in enumerate(fills):
        if fill.value is not None:
            peak = abs(fill.value)
        elif fill.tensor is not None and fill.tensor.numel():
            peak = float(fill.tensor.abs().max())
        else:
            continue
        if peak > largest:
            name = f"{argument}[{position}]" if argument == "fills" else argument
            raise InputValueError(
                f"{name}: expected a value the model's dtype {dtype} can hold "
                f"(|fill| <= {largest:.4g}), got {peak:.4g}"
            )


def warn_if_outside(fills: Sequence[Fill], images: Tensor) -> bool:
    """Warn (`OcclusionProbeWarning`) when a constant fill lies well outside the images' range.

    Legal, since a fill may be meant as an out-of-distribution marker, but usually a unit
    mistake. Returns True when it warned.
    """
    low, high = float(images.min()), float(images.max())
    slack = _RANGE_SLACK * max(high - low, abs(low), abs(high), 1e-12)
    outside = [
        f.label for f in fills if f.value is not None and not low - slack <= f.value <= high + slack
    ]
    if outside:
        warnings.warn(
            f"fills: {outside} lie outside the images' value range [{low:.4g}, {high:.4g}]; "
            "check that fills and images use the same units (e.g. [0, 1] vs 0..255)",
            OcclusionProbeWarning,
            stacklevel=3,
        )
    return bool(outside)


def stack_fills(fills: Sequence[Fill], images: Tensor) -> Tensor:
    """All fills for a batch, stacked: Tensor, shape (V, n or 1, C or 1, *(each spatial size
    or 1)).

    Constants stay (V, 1, 1, 1, 1), so building occluded images broadcasts them instead of
    materialising V full images. Region-aware fills need their regions: see `layer_fills`.
    """
    parts = [fill.for_batch(images) for fill in fills]
    shape = _broadcast_shapes(*(part.shape for part in parts))
    return torch.stack([part.expand(shape) for part in parts])


def needs_layers(fills: Sequence[Fill], weights: Tensor | None = None) -> bool:
    """Whether some fill is region-aware or the regions are soft (`weights`), so that a
    sweep runs its regions in layers."""
    return weights is not None or any(fill.region is not None for fill in fills)


def disjoint_layers(masks: Tensor) -> list[list[int]]:
    """The regions in layers of pairwise disjoint masks, each region in the first layer
    where it overlaps no other.

    masks : Tensor, shape (R, *spatial), bool
    returns : lists of region positions, increasing within each layer

    Examples
    --------
    >>> from occlusion_probe import grid, sliding_windows
    >>> disjoint_layers(grid(8, 8, 2, 2).masks)
    [[0, 1, 2, 3]]
    >>> disjoint_layers(sliding_windows(8, 8, window=4, stride=2).masks)
    [[0, 2, 6, 8], [1, 7], [3, 5], [4]]
    """
    layers: list[list[int]] = []
    covered: list[Tensor] = []
    for position, mask in enumerate(masks):
        for layer, union in zip(layers, covered, strict=True):
            if not bool((union & mask).any()):
                layer.append(position)
                union |= mask
                break
        else:
            layers.append([position])
            covered.append(mask.clone())
    return layers


def _checked_values(fill: Fill, made: Tensor, want: tuple[int, ...], images: Tensor) -> Tensor:
    """A region-aware fill's output, refused unless a finite real tensor of shape `want`."""
    if not isinstance(made, Tensor) or made.is_complex() or made.dtype == torch.bool:
        raise InputTypeError(
            f"fills: the region-aware fill {fill.label!r} must return a real-valued Tensor, "
            f"got {describe(made)}"
        )
    if tuple(made.shape) != want:
        raise InputValueError(
            f"fills: the region-aware fill {fill.label!r} returned shape {tuple(made.shape)}, "
            f"expected {want}"
        )
    made = made.to(device=images.device, dtype=images.dtype)
    if not bool(torch.isfinite(made).all()):
        raise InputValueError(
            f"fills: the region-aware fill {fill.label!r} returned NaN or inf values (in "
            f"{images.dtype}); a fill must be finite"
        )
    return made


def fill_for_masks(fill: Fill, images: Tensor, masks: Tensor) -> Tensor:
    """The fill for `images` (n, C, *spatial) where `masks` (n or 1, *spatial), bool, is True.

    Returns a tensor broadcastable to the images whose values at the masked positions are
    the fill's (elsewhere they are unspecified).
    """
    if fill.region is None:
        return fill.for_batch(images)
    made = fill.region(images, masks)
    return _checked_values(fill, made, tuple(images.shape), images)


def layer_fills(
    fills: Sequence[Fill],
    images: Tensor,
    masks: Tensor,
    layer: Sequence[int],
    weights: Tensor | None = None,
) -> Tensor:
    """All fills of one layer of disjoint regions: Tensor, shape (V, n or 1, C or 1, *(each
    spatial size or 1)).

    masks : Tensor, shape (R, *spatial), bool; layer : positions of pairwise disjoint regions;
    weights : Tensor, shape (R, *spatial), soft regions' weights w (None: hard regions).
    A region-aware fill's image holds, on each of the layer's masks, that region's fill and
    elsewhere the images; with weights every fill's image holds ``x * (1 - w) + fill * w``
    there. Other fills of hard regions are as in `stack_fills`.
    """
    n, c = images.shape[:2]
    positions = list(layer)
    masks = masks[positions]
    parts = []
    for fill in fills:
        if fill.region is None and weights is None:
            parts.append(fill.for_batch(images))
            continue
        composite = images.detach().clone()
        flat = composite.view(n, c, -1)
        if fill.region is not None:
            inside = fill.region.regions(images, masks)
        else:
            whole = fill.for_batch(images).expand(images.shape).reshape(n, c, -1)
            inside = [whole[:, :, mask.flatten()] for mask in masks]
        for j, (mask, values) in enumerate(zip(masks, inside, strict=True)):
            where = mask.flatten()
            m = int(where.sum())
            values = _checked_values(fill, values, (n, c, m), images)
            if weights is not None:
                w = weights[positions[j]].flatten()[where].to(images.dtype)
                values = flat[:, :, where] * (1 - w) + values * w
            flat[:, :, where] = values
        parts.append(composite)
    shape = _broadcast_shapes(*(part.shape for part in parts))
    return torch.stack([part.expand(shape) for part in parts])
