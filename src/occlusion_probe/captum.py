"""captum interop: `GridOcclusion`, a captum attribution method backed by `sweep`.

``GridOcclusion(forward_func).attribute(inputs, target, baselines, feature_mask=...)``
returns what ``captum.attr.FeatureAblation(forward_func).attribute(...)`` returns for the
same regions and baseline, but runs one forward per occluded image for all classes at once,
batched across images and regions, so it drops in wherever captum expects an attribution
method (``captum.metrics.sensitivity_max``, ``captum.metrics.infidelity`` on its output,
``captum.attr.visualization``).

>>> import torch
>>> from captum.attr import FeatureAblation
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
>>> images = torch.rand(4, 3, 8, 8)
>>> ours = GridOcclusion(model).attribute(images, target=2, rows=2, cols=2)
>>> mask = grid(8, 8, 2, 2).label_map()[None, None]
>>> theirs = FeatureAblation(model).attribute(images, target=2, feature_mask=mask)
>>> bool(torch.allclose(ours, theirs, atol=1e-6))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from captum.attr._utils.attribution import PerturbationAttribution
from torch import Tensor

from .data import check_tensor_layout
from .errors import InputTypeError, InputValueError, describe
from .regions import Regions, grid
from .sweep import sweep

__all__ = ["GridOcclusion"]

Target: TypeAlias = int | Tensor | list[int] | None


class _Forward:
    """The forward function as `sweep` needs it: ``batch (B, C, H, W) -> outputs (B, K)``.

    Appends the additional forward arguments (expanding per-example ones, which then have a
    leading dimension of 1, to the batch), turns captum's one-output-per-example shapes
    ``(B,)`` into ``(B, 1)``, and records the output dtype so that attributions come back in
    it, as captum returns them.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        args: tuple[object, ...],
        per_example: frozenset[int],
        single_output: bool,
    ) -> None:
        self.forward_func = forward_func
        self.args = args
        self.per_example = per_example
        self.single_output = single_output
        self.dtype: torch.dtype | None = None

    def __call__(self, batch: Tensor) -> Tensor:
        size = batch.shape[0]
        args = tuple(
            arg.expand(size, *arg.shape[1:])
            if position in self.per_example and isinstance(arg, Tensor)
            else arg
            for position, arg in enumerate(self.args)
        )
        outputs = self.forward_func(batch, *args)
        if not isinstance(outputs, Tensor):
            raise InputTypeError(
                f"forward_func: expected a Tensor of shape (B, K) or (B,), got {describe(outputs)}; "
                "outputs aggregated over the batch are not supported"
            )
        if outputs.dim() == 1 and outputs.shape[0] == size:
            outputs = outputs[:, None]
        if outputs.dim() != 2 or outputs.shape[0] != size:
            raise InputValueError(
                f"forward_func: expected outputs of shape (B, K) or (B,) for a batch of B = {size} "
                f"images, got shape {tuple(outputs.shape)}; outputs aggregated over the batch or "
                "with more than one dimension per example are not supported"
            )
        if self.single_output and outputs.shape[1] != 1:
            raise InputValueError(
                f"target: None needs forward_func to return one output per example, shape (B,) "
                f"or (B, 1); it returned {outputs.shape[1]} outputs per example, so pass target="
            )
        self.dtype = outputs.dtype
        return outputs


def _single_input(inputs: object) -> tuple[Tensor, bool]:
    # captum passes single inputs as a tensor or a 1-tuple and expects the same form back.
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise InputValueError(
                f"inputs: expected one tensor (N, C, *spatial) or a 1-tuple of it; GridOcclusion does "
                f"not attribute over several input tensors, got a tuple of {len(inputs)}"
            )
        (tensor,) = inputs
        as_tuple = True
    else:
        tensor, as_tuple = inputs, False
    if not isinstance(tensor, Tensor):
        raise InputTypeError(
            f"inputs: expected a Tensor of shape (N, C, *spatial), got {describe(tensor)}"
        )
    if not 3 <= tensor.dim() <= 5:
        raise InputValueError(
            "inputs: expected shape (N, C, L), (N, C, H, W) or (N, C, D, H, W), got shape "
            f"{tuple(tensor.shape)}"
        )
    return tensor, as_tuple


def _check_target(target: object, n: int) -> int | Tensor | None:
    if target is None:
        return None
    if isinstance(target, bool):
        raise InputTypeError(
            f"target: expected an int, an integer Tensor of shape ({n},) or None, got {target!r}"
        )
    if isinstance(target, (int, np.integer)):
        return int(target)
    if isinstance(target, list):
        if len(target) != n or not all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target
        ):
            raise InputValueError(
                f"target: expected a list of {n} ints (one per example), got {target!r}"
            )
        return torch.tensor(target, dtype=torch.int64)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise InputTypeError(f"target: expected an integer tensor, got {describe(target)}")
        if target.dim() == 0:
            return int(target)
        if tuple(target.shape) != (n,):
            raise InputValueError(
                f"target: expected an integer tensor of shape ({n},) (one per example), got shape "
                f"{tuple(target.shape)}"
            )
        return target.to("cpu", torch.int64)
    raise InputTypeError(
        f"target: expected an int, an integer Tensor of shape ({n},), a list of {n} ints or None "
        f"(tuples indexing multi-dimensional outputs are not supported), got {describe(target)}"
    )


def _check_baselines(
    baselines: object, n: int, image_shape: tuple[int, ...]
) -> tuple[float | Tensor, bool]:
    """The baseline as a `sweep` fill, and whether it differs per example ((N, ...) tensor).

    Checked here, so that errors name `baselines` (not the `fills` of the sweep inside)."""
    dims = len(image_shape) + 1
    if baselines is None:
        return 0.0, False  # captum's default baseline
    if isinstance(baselines, (bool, np.bool_)):
        raise InputTypeError(f"baselines: expected a number or a Tensor, got {baselines!r}")
    if isinstance(baselines, (int, float, np.integer, np.floating)):
        try:
            value = float(baselines)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise InputValueError(f"baselines: expected a finite number, got {baselines!r}")
        return value, False
    if isinstance(baselines, Tensor):
        check_tensor_layout("baselines", baselines)
        if not baselines.is_floating_point() and (
            baselines.dim() > 0 or baselines.is_complex() or baselines.dtype == torch.bool
        ):
            raise InputTypeError(
                "baselines: expected a real number or a floating-point Tensor, got "
                f"{describe(baselines)}"
            )
        if not bool(torch.isfinite(baselines).all()):
            raise InputValueError("baselines: expected finite values, got NaN or inf")
        if baselines.dim() == 0:
            return float(baselines), False
        if baselines.dim() == dims:
            if baselines.shape[0] == 1:
                return baselines[0], False
            if baselines.shape[0] == n:
                return baselines, True
            raise InputValueError(
                f"baselines: expected a leading dimension of 1 or N = {n} for a {dims}-D baseline, "
                f"got shape {tuple(baselines.shape)}"
            )
        # broadcastable to one input without growing it: each size 1 or the input's
        trailing = image_shape[len(image_shape) - baselines.dim() :]
        fits = baselines.dim() <= len(image_shape) and all(
            b in (1, s) for b, s in zip(baselines.shape, trailing, strict=True)
        )
        if not fits:
            raise InputValueError(
                f"baselines: expected a Tensor broadcastable to one input {image_shape} or of "
                f"shape (1 or N = {n}, *{image_shape}), got shape {tuple(baselines.shape)}"
            )
        # captum broadcasts a (W,) baseline to the input; as a sweep fill a 1-d tensor would
        # be ambiguous (W fills or one per column), so it is given at one input's shape
        return baselines.expand(image_shape), False
    raise InputTypeError(
        "baselines: expected a number, a Tensor broadcastable to one input (C, *spatial), or a "
        f"Tensor (N, C, *spatial) of one baseline per example, got {describe(baselines)}"
    )


def _resolve_regions(
    feature_mask: Tensor | None,
    regions: Regions | None,
    rows: int,
    cols: int,
    spatial: tuple[int, ...],
) -> Regions:
    if feature_mask is not None and regions is not None:
        raise InputValueError("feature_mask, regions: pass at most one of them, got both")
    if feature_mask is not None:
        if isinstance(feature_mask, tuple):
            if len(feature_mask) != 1:
                raise InputValueError(
                    f"feature_mask: expected one label map, got a tuple of {len(feature_mask)}"
                )
            (feature_mask,) = feature_mask
        try:
            return Regions.from_label_map(feature_mask, ndim=len(spatial))
        except (InputTypeError, InputValueError) as error:
            # captum's name for the map, and what GridOcclusion takes of it
            raise type(error)(
                f"feature_mask: expected one integer label map shared by all examples and "
                f"channels, shape {spatial} or (1, 1, ...) around it; {error}"
            ) from error
    if regions is not None:
        if not isinstance(regions, Regions):
            raise InputTypeError(
                f"regions: expected a Regions (see occlusion_probe.grid), got {describe(regions)}"
            )
        return regions
    if len(spatial) != 2:
        raise InputValueError(
            f"rows, cols: the default grid is for 2D images, these inputs have {len(spatial)} "
            f"spatial axes {spatial}; pass feature_mask= or regions= (e.g. "
            "occlusion_probe.grid(shape, cells))"
        )
    return grid(spatial[0], spatial[1], rows, cols)


def _format_args(additional_forward_args: object) -> tuple[object, ...]:
    # captum's convention: a tuple is the argument list, anything else is one argument.
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


class GridOcclusion(PerturbationAttribution):  # type: ignore[misc]
    """Occlusion attribution over regions, computed by `occlusion_probe.sweep`.

    Each pixel's attribution is ``f(x)[target] - f(x with its region set to the baseline)[target]``,
    captum's ablation sign convention. For a partition of the image (a grid, or any
    ``feature_mask`` label map) the result equals ``captum.attr.FeatureAblation`` with the
    same ``feature_mask`` and ``baselines``.

    Parameters
    ----------
    forward_func : callable, (B, C, H, W)[, *additional_forward_args] -> (B, K) or (B,)
        A model or function. Like captum, its train/eval state is left alone; unlike captum,
        outputs aggregated over the batch (one scalar per call) are not supported.

    Raises
    ------
    InputTypeError
        When `forward_func` is not callable.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
    >>> attributions = GridOcclusion(model).attribute(torch.rand(2, 1, 48, 48), target=3)
    >>> tuple(attributions.shape)
    (2, 1, 48, 48)
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        if not callable(forward_func):
            raise InputTypeError(f"forward_func: expected a callable, got {describe(forward_func)}")
        PerturbationAttribution.__init__(self, forward_func)

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor],
        target: Target = None,
        baselines: float | Tensor | None = 0.0,
        additional_forward_args: object = None,
        feature_mask: Tensor | None = None,
        rows: int = 4,
        cols: int = 4,
        regions: Regions | None = None,
        batch_size: int | Literal["auto"] = "auto",
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor]:
        """Attribution of each pixel: the output drop when its region is set to the baseline.

        Parameters
        ----------
        inputs : Tensor, shape (N, C, *spatial), or a 1-tuple of it
            The inputs, with 1 to 3 spatial axes (signals, images, volumes); given a 1-tuple,
            a 1-tuple is returned.
        target : int, integer Tensor (N,) or list of N ints, optional
            The output index per example; None when forward_func returns one output per
            example ((B,) or (B, 1)).
        baselines : number or Tensor, optional
            A number, a Tensor broadcastable to one input (C, *spatial) or (1, C, *spatial),
            or a Tensor (N, C, *spatial) of one baseline per example; None means 0.
        additional_forward_args : object, optional
            Passed after the inputs, ``forward_func(x, *args)`` (a tuple is the argument list,
            anything else one argument). Tensors whose first dimension is N are per-example
            arguments, as in captum; each example is then swept on its own, with its row of
            the argument expanded to the batch of occluded copies. Other arguments are passed
            unchanged to every call.
        feature_mask : Tensor, shape (*spatial) or (1, 1, *spatial), optional
            Integer label map, captum-style, shared by all examples and channels; each label
            is one region. Otherwise `regions`, else ``grid(H, W, rows, cols)``.
        rows, cols : int
            The grid used for 2D images when neither feature_mask nor regions is given.
        regions : Regions, optional
            The regions to occlude; overlapping ones (`sliding_windows`) average per pixel, as
            captum's ``Occlusion`` does.
        batch_size : int or "auto"
            Occluded images per forward call, or ``"auto"``.
        show_progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        Tensor, shape (N, C, *spatial), or a 1-tuple of it
            The attributions, in the dtype of forward_func's outputs; a 1-tuple when `inputs`
            is one.

        Raises
        ------
        InputTypeError
            When an argument has a type `attribute` cannot work with (e.g. a float target).
        InputValueError
            When an argument has an unusable value (e.g. a tuple of several inputs, a target
            of the wrong length, both `feature_mask` and `regions`), or forward_func returns
            outputs of an unsupported shape.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
        >>> images = torch.rand(2, 3, 8, 8)
        >>> (attributions,) = GridOcclusion(model).attribute((images,), target=[0, 4], rows=2,
        ...                                                   cols=2)
        >>> tuple(attributions.shape)
        (2, 3, 8, 8)
        """
        images, as_tuple = _single_input(inputs)
        n, spatial = images.shape[0], tuple(images.shape[2:])
        checked_target = _check_target(target, n)
        fill, per_example_baseline = _check_baselines(baselines, n, tuple(images.shape[1:]))
        chosen = _resolve_regions(feature_mask, regions, rows, cols, spatial)
        # as in sweep, the regions fix the rank: inputs (N, C, *spatial) or (N, *spatial)
        if images.dim() - chosen.ndim not in (1, 2) or (
            tuple(images.shape[images.dim() - chosen.ndim :]) != chosen.spatial_shape
        ):
            given = "feature_mask" if feature_mask is not None else "regions"
            raise InputValueError(
                f"{given}: expected the spatial shape of the inputs, which have shape "
                f"{tuple(images.shape)} (N, C, *spatial), got {given} of spatial shape "
                f"{chosen.spatial_shape}"
            )
        args = _format_args(additional_forward_args)
        per_example_args = frozenset(
            position
            for position, arg in enumerate(args)
            if isinstance(arg, Tensor) and arg.dim() >= 1 and arg.shape[0] == n
        )
        # One sweep batches all examples together; it needs every example to share the
        # forward arguments and the baseline, otherwise each example gets its own sweep.
        separately = bool(per_example_args) or per_example_baseline
        parts = [slice(i, i + 1) for i in range(n)] if separately else [slice(0, n)]

        attributions = []
        for part in parts:
            part_args = tuple(
                arg[part] if position in per_example_args and isinstance(arg, Tensor) else arg
                for position, arg in enumerate(args)
            )
            forward = _Forward(
                self.forward_func, part_args, per_example_args, checked_target is None
            )
            part_fill = fill[part][0] if per_example_baseline and isinstance(fill, Tensor) else fill
            result = sweep(
                forward,
                images[part],
                chosen,
                fills=(part_fill,),
                output="logits",
                batch_size=batch_size,
                device=images.device,
                progress=show_progress,
                engine="dense",
            )
            if checked_target is None:
                part_target: int | Tensor = 0
            elif isinstance(checked_target, Tensor):
                part_target = checked_target[part]
            else:
                part_target = checked_target
            attribution = result.attribution(target=part_target, fill_index=0)
            if forward.dtype is not None:
                attribution = attribution.to(forward.dtype)
            attributions.append(attribution)
        combined = torch.cat(attributions).to(images.device)
        return (combined,) if as_tuple else combined
