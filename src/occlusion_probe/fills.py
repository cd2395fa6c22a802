"""Fill specifications: what an occluded pixel is set to.

A fill is one of

* a number: every occluded pixel gets that value (the paper's 0.0, 0.2, ..., 1.0);
* a tensor broadcastable to one image (C, H, W): e.g. the data set mean image, or a
  per-channel colour of shape (C, 1, 1);
* a callable ``images -> fill images``: gets a batch (n, C, H, W) and returns tensors
  broadcastable to it, e.g. a blurred copy of each image.
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
from .errors import InputTypeError, InputValueError, check_one_argument_callable, describe

__all__ = [
    "Fill",
    "FillFunction",
    "FillSpec",
    "check_fills_fit",
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
    """A callable that makes fill images from a batch: (n, C, H, W) -> broadcastable to it."""

    def __call__(self, images: Tensor, /) -> Tensor: ...


FillSpec: TypeAlias = float | int | Tensor | FillFunction


@dataclass(frozen=True, eq=False)
class Fill:
    """One resolved fill: a constant, a fixed tensor, or a function of the images.

    Exactly one of ``value``, ``tensor`` and ``function`` is set.
    """

    label: str
    value: float | None = None
    tensor: Tensor | None = None
    function: FillFunction | None = None

    def for_batch(self, images: Tensor) -> Tensor:
        """The fill for a batch of images (n, C, H, W), as a tensor broadcastable to it."""
        if self.value is not None:
            return torch.full((1, 1, 1, 1), self.value, dtype=images.dtype, device=images.device)
        if self.tensor is not None:
            return self.tensor.to(device=images.device, dtype=images.dtype).unsqueeze(0)
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
        made = made.to(device=images.device, dtype=images.dtype)
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
    image_shape: tuple[int, int, int],
    argument: str = "fills",
) -> tuple[Fill, ...]:
    """Check and normalise the `fills` argument for images of shape (C, H, W).

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
                # (W,) broadcasts as one value per column, but reads just as well as W fills.
                raise InputValueError(
                    f"{name}: a 1-d tensor of {spec.shape[0]} values is ambiguous (one fill per "
                    "column, or several fills?); pass a list of numbers for several fills "
                    f"(fills=t.tolist()), or shape (1, 1, {spec.shape[0]}) for one per column"
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
        elif callable(spec):
            check_one_argument_callable(name, spec, "a batch of images (n, C, H, W)")
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
    from .result import OcclusionProbeWarning

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
    """All fills for a batch, stacked: Tensor, shape (V, n or 1, C or 1, H or 1, W or 1).

    Constants stay (V, 1, 1, 1, 1), so building occluded images broadcasts them instead of
    materialising V full images.
    """
    parts = [fill.for_batch(images) for fill in fills]
    shape = _broadcast_shapes(*(part.shape for part in parts))
    return torch.stack([part.expand(shape) for part in parts])
