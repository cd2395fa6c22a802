"""Incremental engine: exact occlusion outputs of plain conv nets, recomputing only what changes.

The idea of Krypton (Nakandala, Kumar, Papakonstantinou, SIGMOD 2019). Occluding a region
changes the input only inside the region's bounding box. A convolution or pooling layer then
changes only the outputs whose receptive field meets that box (the box's *projective field*),
and an elementwise layer changes only the box itself. So the unoccluded activations of every
spatial layer are computed once per image (the cache), and for each occluded image only the
changed box is carried from layer to layer: the layer is run on the smallest input window
that produces the new box, read from the cache with the changed box written in, and padded
only where the window crosses the true border of the map. When the box has grown to cover
most of a map, or the spatial layers end (at ``Flatten``), the box is written into a copy of
the cached map and the remaining layers run in full, once per occluded image.

All occluded images of one region share the same boxes at every layer, and so do regions
whose boxes have the same sizes and the same offsets within their windows (e.g. the interior
cells of a grid), so the work is batched over (regions x images x fills): per layer and batch, a few slice
copies per region to assemble the input windows (channels last, each image's cached frame
broadcast over its fills) and one call of the layer, with no Python loop over images and no
host-device synchronisation inside the loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occlusion_probe.engines.boxes import Box, bounding_boxes
from occlusion_probe.engines.linearize import layer_chain
from occlusion_probe.errors import InputTypeError, InputValueError, describe

__all__ = ["DENSE_SWITCH_FRACTION", "run_incremental", "unsupported_reason"]

#: When a layer's changed box covers more than this fraction of its output map, the rest of the
#: network is run in full: past that point the gathers and the halo recomputation around the
#: box cost about as much as the full layer, and full maps batch better.
DENSE_SWITCH_FRACTION = 0.6

# Layers that act on each activation (or each channel of each position) independently, so a
# changed box stays the same box. BatchNorm2d is among them in eval mode with running stats.
_ELEMENTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Tanh,
    nn.Tanhshrink,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Softplus,
    nn.Softsign,
)
# Identities in eval mode (run_incremental refuses a model in training mode).
_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_LOCAL_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
)
_SUPPORTED_SPATIAL = ", ".join(
    t.__name__ for t in (*_LOCAL_TYPES, nn.BatchNorm2d, *_ELEMENTWISE_TYPES, *_DROPOUT_TYPES)
)
_SUPPORTED_HEAD = ", ".join(
    t.__name__
    for t in (
        nn.Linear,
        nn.BatchNorm1d,
        nn.Flatten,
        nn.Softmax,
        nn.LogSoftmax,
        *_ELEMENTWISE_TYPES,
        *_DROPOUT_TYPES,
    )
)


# ----------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class _Axis:
    """Geometry of a convolution or pooling layer along one spatial axis.

    Output ``o`` reads the padded input positions ``o * stride + t * dilation`` for
    ``t < kernel``; padded position ``q`` is input position ``q - pad_before``.
    """

    kernel: int
    stride: int
    dilation: int
    pad_before: int
    pad_after: int
    in_size: int
    out_size: int

    @property
    def extent(self) -> int:
        """Number of padded input positions one output spans."""
        return self.dilation * (self.kernel - 1) + 1

    def affected(self, start: int, stop: int) -> tuple[int, int]:
        """Output range ``[lo, hi)`` whose receptive fields meet input range ``[start, stop)``;
        ``lo >= hi`` when no output reads the range (a stride larger than the extent)."""
        # lo = ceil((start + pad_before - extent + 1) / stride), clamped to the map.
        lo = max(0, -((self.extent - 1 - start - self.pad_before) // self.stride))
        hi = min(self.out_size, (stop - 1 + self.pad_before) // self.stride + 1)
        return lo, hi

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        """Padded input range ``[start, stop)`` that outputs ``[lo, hi)`` read."""
        return lo * self.stride, (hi - 1) * self.stride + self.extent


def _make_axis(
    kernel: int, stride: int, dilation: int, pad_before: int, pad_after: int, in_size: int
) -> _Axis:
    span = in_size + pad_before + pad_after - (dilation * (kernel - 1) + 1)
    out_size = span // stride + 1 if span >= 0 else 0
    return _Axis(kernel, stride, dilation, pad_before, pad_after, in_size, out_size)


@dataclass(frozen=True, eq=False)
class _LocalLayer:
    """A convolution or pooling layer, with what is needed to run it on one input window.

    ``operation`` selects the functional op; the window is explicitly padded (by reading it
    from the padded cache) so the op always runs with padding 0. ``divisor`` is the
    ``divisor_override`` of an average pool (``None``: the kernel area); ``exclude_pad`` marks an
    average pool whose divisor is the number of non-padding inputs, applied afterwards from a
    per-position count map.
    """

    module: nn.Module
    operation: Literal["conv", "max", "avg"]
    rows: _Axis
    cols: _Axis
    conv: nn.Conv2d | None = None
    divisor: int | None = None
    exclude_pad: bool = False

    @property
    def padded(self) -> bool:
        """Whether the layer reads beyond the border of its input."""
        return any(
            (self.rows.pad_before, self.rows.pad_after, self.cols.pad_before, self.cols.pad_after)
        )

    def pad(self, activation: Tensor) -> Tensor:
        """activation (b, C, H, W) -> (b, C, H + pads, W + pads) with the layer's pad value."""
        if not self.padded:
            return activation
        # Max pooling ignores padding, which is what -inf padding does.
        value = float("-inf") if self.operation == "max" else 0.0
        pads = (
            self.cols.pad_before,
            self.cols.pad_after,
            self.rows.pad_before,
            self.rows.pad_after,
        )
        return F.pad(activation, pads, value=value)

    def on_window(self, window: Tensor) -> Tensor:
        """Run the layer on an already padded window (b, C, h, w) -> (b, C', h', w')."""
        stride = (self.rows.stride, self.cols.stride)
        kernel = (self.rows.kernel, self.cols.kernel)
        dilation = (self.rows.dilation, self.cols.dilation)
        conv = self.conv
        if conv is not None:
            return F.conv2d(window, conv.weight, conv.bias, stride, 0, dilation, conv.groups)
        if self.operation == "max":
            return F.max_pool2d(window, kernel, stride, 0, dilation)
        # With explicit zero padding and padding 0 the pool divides by the kernel area, as
        # count_include_pad=True does; exclude_pad pools take the sum and divide by counts later.
        divisor = 1 if self.exclude_pad else self.divisor
        return F.avg_pool2d(window, kernel, stride, 0, False, True, divisor)

    def pad_counts(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(H_out, W_out): number of non-padding inputs under each output of the layer."""
        ones = torch.ones((1, 1, self.rows.in_size, self.cols.in_size), device=device, dtype=dtype)
        kernel = (self.rows.kernel, self.cols.kernel)
        stride = (self.rows.stride, self.cols.stride)
        return F.avg_pool2d(self.pad(ones), kernel, stride, 0, False, True, 1)[0, 0]


_SpatialLayer = _LocalLayer | nn.Module


@dataclass(frozen=True, eq=False)
class _Architecture:
    """A qualifying model split at its first Flatten.

    spatial : layers before the Flatten; ``_LocalLayer`` or an elementwise module
    head : the Flatten and everything after it (run in full on every occluded image)
    shapes : (C, H, W) of every spatial activation; ``shapes[j]`` is the input of ``spatial[j]``
    num_outputs : K, the length of the model's output vector
    """

    spatial: tuple[_SpatialLayer, ...]
    head: tuple[nn.Module, ...]
    shapes: tuple[tuple[int, int, int], ...]
    num_outputs: int


def _pair(value: object) -> tuple[int, int] | None:
    """(a, b) from an int or a pair of ints; None for anything else (e.g. 'same')."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        first, second = value[0], value[1]
        if isinstance(first, int) and isinstance(second, int):
            return first, second
    return None


def _label(name: str, layer: nn.Module) -> str:
    return f"layer {name} ({type(layer).__name__})"


def _conv_layer(
    name: str, conv: nn.Conv2d, shape: tuple[int, int, int]
) -> tuple[_LocalLayer, tuple[int, int, int]] | str:
    channels, height, width = shape
    if conv.padding_mode != "zeros":
        return f"{_label(name, conv)} uses padding_mode={conv.padding_mode!r}; only 'zeros' is supported"
    if conv.in_channels != channels:
        return f"{_label(name, conv)} expects {conv.in_channels} input channels but receives {channels}"
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    pads: list[tuple[int, int]] = []
    for axis in range(2):
        if conv.padding == "valid":
            pads.append((0, 0))
        elif conv.padding == "same":
            # The split PyTorch uses for 'same': the odd extra position goes after.
            total = dilation[axis] * (kernel[axis] - 1)
            pads.append((total // 2, total - total // 2))
        else:
            padding = _pair(conv.padding)
            if padding is None:
                return f"{_label(name, conv)} has unsupported padding {conv.padding!r}"
            pads.append((padding[axis], padding[axis]))
    rows = _make_axis(kernel[0], stride[0], dilation[0], *pads[0], height)
    cols = _make_axis(kernel[1], stride[1], dilation[1], *pads[1], width)
    if rows.out_size < 1 or cols.out_size < 1:
        return f"{_label(name, conv)} gets a {height}x{width} input, smaller than its kernel"
    return _LocalLayer(conv, "conv", rows, cols, conv), (
        conv.out_channels,
        rows.out_size,
        cols.out_size,
    )


def _pool_layer(
    name: str, pool: nn.Module, shape: tuple[int, int, int]
) -> tuple[_LocalLayer, tuple[int, int, int]] | str:
    channels, height, width = shape
    if isinstance(pool, nn.AdaptiveMaxPool2d | nn.AdaptiveAvgPool2d):
        if isinstance(pool, nn.AdaptiveMaxPool2d) and pool.return_indices:
            return f"{_label(name, pool)} returns indices; only plain outputs are supported"
        requested = pool.output_size
        if isinstance(requested, int) or requested is None:
            requested = (requested, requested)
        sizes: list[int] = []
        for wanted, size in zip(requested, (height, width), strict=True):
            wanted = size if wanted is None else int(wanted)
            if wanted < 1 or size % wanted != 0:
                return (
                    f"{_label(name, pool)} maps a {height}x{width} input to {requested}, which is "
                    "not a whole-number pooling window; only evenly dividing sizes are supported"
                )
            sizes.append(size // wanted)
        # An evenly dividing adaptive pool is a fixed pool with kernel = stride = size / output.
        rows = _make_axis(sizes[0], sizes[0], 1, 0, 0, height)
        cols = _make_axis(sizes[1], sizes[1], 1, 0, 0, width)
        operation: Literal["max", "avg"] = (
            "max" if isinstance(pool, nn.AdaptiveMaxPool2d) else "avg"
        )
        return _LocalLayer(pool, operation, rows, cols), (channels, rows.out_size, cols.out_size)
    if not isinstance(pool, nn.MaxPool2d | nn.AvgPool2d):
        return f"{_label(name, pool)} is not a pooling layer"
    if pool.ceil_mode:
        return f"{_label(name, pool)} uses ceil_mode=True; only ceil_mode=False is supported"
    kernel = _pair(pool.kernel_size)
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    padding = _pair(pool.padding)
    dilation = _pair(pool.dilation) if isinstance(pool, nn.MaxPool2d) else (1, 1)
    if kernel is None or stride is None or padding is None or dilation is None:
        return f"{_label(name, pool)} has an unsupported kernel, stride, padding or dilation"
    rows = _make_axis(kernel[0], stride[0], dilation[0], padding[0], padding[0], height)
    cols = _make_axis(kernel[1], stride[1], dilation[1], padding[1], padding[1], width)
    if rows.out_size < 1 or cols.out_size < 1:
        return f"{_label(name, pool)} gets a {height}x{width} input, smaller than its kernel"
    out_shape = (channels, rows.out_size, cols.out_size)
    if isinstance(pool, nn.MaxPool2d):
        if pool.return_indices:
            return f"{_label(name, pool)} returns indices; only plain outputs are supported"
        return _LocalLayer(pool, "max", rows, cols), out_shape
    divisor = pool.divisor_override
    exclude_pad = divisor is None and not pool.count_include_pad and any(padding)
    return _LocalLayer(pool, "avg", rows, cols, None, divisor, exclude_pad), out_shape


def _elementwise_reason(name: str, layer: nn.Module, features: int) -> str | None:
    """Why `layer` cannot act position by position on `features` channels, or None."""
    if type(layer) is nn.PReLU and layer.num_parameters not in (1, features):
        return (
            f"{_label(name, layer)} has {layer.num_parameters} parameters for {features} channels"
        )
    if type(layer) in (nn.BatchNorm2d, nn.BatchNorm1d):
        if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
            return f"{_label(name, layer)} is not a batch norm"
        if layer.running_mean is None or layer.running_var is None:
            # Without running statistics eval mode normalises with batch statistics, which mixes
            # the occluded images of a batch: not a per-image function.
            return f"{_label(name, layer)} has track_running_stats=False; running statistics are needed"
        if layer.num_features != features:
            return f"{_label(name, layer)} expects {layer.num_features} features but receives {features}"
    return None


def _analyse(model: object, image_shape: tuple[int, int, int]) -> _Architecture | str:
    """The model's layers and shapes when it qualifies, else the reason it does not."""
    layers = layer_chain(model)
    if isinstance(layers, str):
        return layers
    if not layers:
        return "model is an empty nn.Sequential"
    shape = image_shape
    shapes: list[tuple[int, int, int]] = []
    spatial: list[_SpatialLayer] = []
    flatten_at: int | None = None
    for position, (name, layer) in enumerate(layers):
        kind = type(layer)
        shapes.append(shape)
        if kind is nn.Flatten:
            if layer.start_dim != 1 or layer.end_dim != -1:
                return f"{_label(name, layer)} has start_dim={layer.start_dim}, end_dim={layer.end_dim}; only Flatten(1, -1) is supported"
            flatten_at = position
            break
        if kind is nn.Conv2d and isinstance(layer, nn.Conv2d):
            made = _conv_layer(name, layer, shape)
        elif kind in _LOCAL_TYPES:
            made = _pool_layer(name, layer, shape)
        elif kind in _ELEMENTWISE_TYPES or kind in _DROPOUT_TYPES or kind is nn.BatchNorm2d:
            reason = _elementwise_reason(name, layer, shape[0])
            if reason is not None:
                return reason
            spatial.append(layer)
            continue
        else:
            return (
                f"{_label(name, layer)} is not a supported spatial layer before the Flatten; "
                f"supported: {_SUPPORTED_SPATIAL}"
            )
        if isinstance(made, str):
            return made
        local, shape = made
        spatial.append(local)
    if flatten_at is None:
        return "model has no Flatten layer; the incremental engine needs spatial layers, a Flatten and dense layers"
    if not spatial:
        return (
            f"{_label(*layers[0])} comes first, so the model has no spatial layers before the "
            "Flatten and nothing to compute incrementally"
        )
    features = shape[0] * shape[1] * shape[2]
    for name, layer in layers[flatten_at + 1 :]:
        kind = type(layer)
        if kind is nn.Linear and isinstance(layer, nn.Linear):
            if layer.in_features != features:
                return f"{_label(name, layer)} expects {layer.in_features} features but receives {features}"
            features = layer.out_features
        elif kind in (nn.Softmax, nn.LogSoftmax):
            if layer.dim not in (1, -1):
                return f"{_label(name, layer)} has dim={layer.dim}; only dim=1 or -1 is supported"
        elif kind is nn.Flatten:
            if layer.start_dim != 1 or layer.end_dim != -1:
                return f"{_label(name, layer)} has start_dim={layer.start_dim}, end_dim={layer.end_dim}; only Flatten(1, -1) is supported"
        elif kind in _ELEMENTWISE_TYPES or kind in _DROPOUT_TYPES or kind is nn.BatchNorm1d:
            reason = _elementwise_reason(name, layer, features)
            if reason is not None:
                return reason
        else:
            return (
                f"{_label(name, layer)} is not a supported layer after the Flatten; "
                f"supported: {_SUPPORTED_HEAD}"
            )
    head = tuple(layer for _, layer in layers[flatten_at:])
    return _Architecture(tuple(spatial), head, tuple(shapes[: len(spatial) + 1]), features)


def _check_image_shape(image_shape: object) -> tuple[int, int, int]:
    if (
        not isinstance(image_shape, Sequence)
        or len(image_shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_shape)
    ):
        raise InputValueError(
            f"image_shape: expected (C, H, W) of three positive ints, got {describe(image_shape)}"
        )
    return int(image_shape[0]), int(image_shape[1]), int(image_shape[2])


def unsupported_reason(model: object, image_shape: tuple[int, int, int]) -> str | None:
    """None when `model` qualifies for the incremental engine on images of shape (C, H, W),
    else one sentence naming the first offending layer and why.

    Qualifies: an ``nn.Sequential`` (nested ones are flattened), or any ``nn.Module`` whose
    ``forward`` torch.fx reads as a straight chain of such layers and their functional forms
    (``F.relu``, ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``, ... see
    ``engines.linearize``), of Conv2d (zero padding, any
    stride, dilation, groups), MaxPool2d / AvgPool2d (ceil_mode=False), evenly dividing
    AdaptiveMax/AvgPool2d, BatchNorm2d with running statistics, elementwise activations and
    Dropout, then ``Flatten()`` and Linear / BatchNorm1d / activation / Dropout / Softmax layers.
    At least one layer must come before the Flatten.
    """
    shape = _check_image_shape(image_shape)
    analysed = _analyse(model, shape)
    return analysed if isinstance(analysed, str) else None


# ----------------------------------------------------------------------------- region routes


@dataclass(frozen=True)
class _Step:
    """One local layer run on patches, with sizes shared by the regions of a batch.

    position : index of the layer in ``_Architecture.spatial``
    window : (h, w) of the padded input window each new patch is computed from
    output : (h, w) of the new patches
    """

    position: int
    window: tuple[int, int]
    output: tuple[int, int]


@dataclass(frozen=True)
class _Route:
    """The computation shared by the regions of a batch.

    box : (h, w) of the regions' bounding boxes in the input
    steps : the local layers run on patches, in order
    switch : index into ``spatial`` from which the layers run on full maps
        (``len(spatial)``: only the head does)
    """

    box: tuple[int, int]
    steps: tuple[_Step, ...]
    switch: int


@dataclass(frozen=True)
class _Insert:
    """How one region's patch enters one window (or the full map at the switch).

    corner : (y, x) of the window in the source map (padded coordinates for a window)
    crop : (r0, r1, c0, c1), the part of the patch that lies inside the window
    place : (y, x) where that part lands in the window
    """

    corner: tuple[int, int]
    crop: tuple[int, int, int, int]
    place: tuple[int, int]


@dataclass(frozen=True)
class _Placement:
    """Where one region's boxes are.

    origin : (y, x) of the bounding box in the input
    steps : the insert of each step's window
    outputs : (y, x) of each step's output patch on the step's output map
    final : the insert into the full map at the switch layer's input
    """

    origin: tuple[int, int]
    steps: tuple[_Insert, ...]
    outputs: tuple[tuple[int, int], ...]
    final: _Insert


def _reaches_output(arch: _Architecture, box: Box) -> bool:
    """Whether a change inside `box` of the input can change the model's output at all (a
    stride longer than a kernel skips positions, so some changes are never read)."""
    top, bottom, left, right = box
    for layer in arch.spatial:
        if isinstance(layer, _LocalLayer):
            top, bottom = layer.rows.affected(top, bottom)
            left, right = layer.cols.affected(left, right)
            if top >= bottom or left >= right:
                return False
    return True


def _insert(patch: Box, window: Box) -> _Insert:
    """The part of `patch` inside `window`, both in the same (padded) coordinates; the window
    may miss part of the patch when a stride longer than the kernel skips positions."""
    top, bottom = max(patch[0], window[0]), min(patch[1], window[1])
    left, right = max(patch[2], window[2]), min(patch[3], window[3])
    return _Insert(
        (window[0], window[2]),
        (top - patch[0], bottom - patch[0], left - patch[2], right - patch[2]),
        (top - window[0], left - window[2]),
    )


def _plan(
    arch: _Architecture, boxes: Sequence[Box], dense_fraction: float
) -> tuple[_Route, list[_Placement]]:
    """The shared route of regions whose bounding boxes have the same size, and each one's
    placement.

    At every local layer each region's changed output box is grown to the largest size in
    the batch (kept inside the map), so all regions share one window size and are computed
    by one call of the layer. Recomputing a few unchanged outputs is exact. The switch to
    full maps comes at the first local layer whose shared output size exceeds
    `dense_fraction` of its map.
    """
    height, width = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    current = list(boxes)
    steps: list[_Step] = []
    inserts: list[list[_Insert]] = [[] for _ in boxes]
    outputs: list[list[tuple[int, int]]] = [[] for _ in boxes]
    switch = len(arch.spatial)
    for position, layer in enumerate(arch.spatial):
        if not isinstance(layer, _LocalLayer):
            continue
        rows, cols = layer.rows, layer.cols
        affected = [(*rows.affected(t, b), *cols.affected(le, r)) for t, b, le, r in current]
        out_height = max(b - t for t, b, _, _ in affected)
        out_width = max(r - le for _, _, le, r in affected)
        if out_height * out_width > dense_fraction * rows.out_size * cols.out_size:
            switch = position
            break
        grown: list[Box] = []
        for region, (box, (t, _, le, _)) in enumerate(zip(current, affected, strict=True)):
            # Start early enough that the grown box stays on the map; it still covers the
            # changed outputs, since those fit in out_height rows.
            top, left = min(t, rows.out_size - out_height), min(le, cols.out_size - out_width)
            win_top, win_bottom = rows.window(top, top + out_height)
            win_left, win_right = cols.window(left, left + out_width)
            patch = (
                box[0] + rows.pad_before,
                box[1] + rows.pad_before,
                box[2] + cols.pad_before,
                box[3] + cols.pad_before,
            )
            inserts[region].append(_insert(patch, (win_top, win_bottom, win_left, win_right)))
            outputs[region].append((top, left))
            grown.append((top, top + out_height, left, left + out_width))
        window_height = rows.window(0, out_height)[1]
        window_width = cols.window(0, out_width)[1]
        steps.append(_Step(position, (window_height, window_width), (out_height, out_width)))
        current = grown
    placements = [
        _Placement(
            (box[0], box[2]),
            tuple(region_inserts),
            tuple(region_outputs),
            _insert(last, (0, last[1], 0, last[3])),
        )
        for box, last, region_inserts, region_outputs in zip(
            boxes, current, inserts, outputs, strict=True
        )
    ]
    return _Route((height, width), tuple(steps), switch), placements


# ----------------------------------------------------------------------------- batched kernels


def _fast_call(layer: _SpatialLayer) -> Callable[[Tensor], Tensor]:
    """A function equal to `layer` on tensors the engine owns (fresh patches and maps).

    Common activations run in place, which saves a fresh allocation per call (a large part
    of their cost on CPU); Dropout in eval mode and Identity are skipped.
    """
    if isinstance(layer, _LocalLayer):
        return layer.module
    kind = type(layer)
    if kind in _DROPOUT_TYPES or kind is nn.Identity:
        return _identity
    if kind is nn.ReLU:
        return torch.relu_
    if kind is nn.LeakyReLU and isinstance(layer, nn.LeakyReLU):
        return functools.partial(F.leaky_relu_, negative_slope=layer.negative_slope)
    if kind in (nn.Hardtanh, nn.ReLU6) and isinstance(layer, nn.Hardtanh):
        return functools.partial(F.hardtanh_, min_val=layer.min_val, max_val=layer.max_val)
    if kind is nn.SiLU:
        return functools.partial(F.silu, inplace=True)
    return layer


def _identity(activation: Tensor) -> Tensor:
    return activation


@dataclass(frozen=True, eq=False)
class _RegionBatch:
    """Regions of one route processed together.

    regions : (G,) long tensor of region ids, on the device
    masks : G bool tensors (h, w), each region's mask inside its bounding box
    placements : where each region's boxes are
    """

    route: _Route
    regions: Tensor
    masks: tuple[Tensor, ...]
    placements: tuple[_Placement, ...]


def _region_batches(
    arch: _Architecture, masks: Tensor, regions_per_batch: int, dense_fraction: float
) -> tuple[list[_RegionBatch], list[int]]:
    """Batches of at most `regions_per_batch` regions with equal bounding-box sizes; also the
    regions whose occlusion changes nothing the model reads."""
    by_size: dict[tuple[int, int], list[tuple[int, Box]]] = {}
    unaffected: list[int] = []
    for region, box in enumerate(bounding_boxes(masks)):
        if box is None or not _reaches_output(arch, box):
            unaffected.append(region)
        else:
            by_size.setdefault((box[1] - box[0], box[3] - box[2]), []).append((region, box))
    batches: list[_RegionBatch] = []
    for (height, width), members in by_size.items():
        for start in range(0, len(members), regions_per_batch):
            chunk = members[start : start + regions_per_batch]
            route, placements = _plan(arch, [box for _, box in chunk], dense_fraction)
            box_masks = tuple(
                masks[region, top : top + height, left : left + width]
                for region, (top, _, left, _) in chunk
            )
            regions = torch.tensor(
                [region for region, _ in chunk], dtype=torch.long, device=masks.device
            )
            batches.append(_RegionBatch(route, regions, box_masks, tuple(placements)))
    return batches, unaffected


@dataclass(frozen=True, eq=False)
class _Cache:
    """Unoccluded activations of one chunk of images, channels last.

    padded : activation j padded for local layer j, for every j some route runs a step at
    plain : activation j as is, for switch points not in ``padded``
    baseline : (n, K) the model's output on the unoccluded images
    """

    padded: dict[int, Tensor]
    plain: dict[int, Tensor]
    baseline: Tensor

    def activation(self, arch: _Architecture, position: int) -> Tensor:
        """(n, C, H, W): the unpadded activation at the input of spatial layer `position`."""
        if position in self.plain:
            return self.plain[position]
        layer = arch.spatial[position]
        if not isinstance(layer, _LocalLayer):
            raise KeyError(position)
        rows, cols = layer.rows, layer.cols
        return self.padded[position][
            :,
            :,
            rows.pad_before : rows.pad_before + rows.in_size,
            cols.pad_before : cols.pad_before + cols.in_size,
        ]


def _run_layers(layers: Sequence[Callable[[Tensor], Tensor]], activation: Tensor) -> Tensor:
    for layer in layers:
        activation = layer(activation)
    return activation


def _build_cache(
    arch: _Architecture, images: Tensor, padded_at: set[int], plain_at: set[int]
) -> _Cache:
    """Run the model on the unoccluded `images` (n, C, H, W), keeping the activations routes read."""
    padded: dict[int, Tensor] = {}
    plain: dict[int, Tensor] = {}
    # The first layer may work in place; the caller's images must stay as they are.
    activation = images if isinstance(arch.spatial[0], _LocalLayer) else images.clone()
    for position, layer in enumerate(arch.spatial):
        if position in padded_at and isinstance(layer, _LocalLayer):
            padded[position] = layer.pad(activation).contiguous(memory_format=torch.channels_last)
        elif position in plain_at:
            # Only a local layer reads this tensor (never in place), so a view is safe.
            plain[position] = activation.contiguous(memory_format=torch.channels_last)
        activation = (layer.module if isinstance(layer, _LocalLayer) else layer)(activation)
    if len(arch.spatial) in plain_at:
        # A copy: the head may start with an in-place op on a view of this tensor.
        plain[len(arch.spatial)] = activation.clone(memory_format=torch.channels_last)
    return _Cache(padded, plain, _run_layers(arch.head, activation))


def _assemble(
    source: Tensor,
    images: slice,
    num_fills: int,
    size: tuple[int, int],
    patch: Tensor,
    inserts: Sequence[_Insert],
) -> Tensor:
    """Maps (G * nI * nV, C, h, w) in (region, image, fill) order: for region g, the box of
    the cached `source` at ``inserts[g].corner`` with the region's new values from `patch`
    written in.

    source : (n, C, Hs, Ws), a cached activation (padded when it feeds a window)
    images : the chunk images the items come from (nI); each is paired with num_fills fills
    size : (h, w) of the boxes
    patch : (G * nI * nV, C, ph, pw)
    """
    regions, count = len(inserts), images.stop - images.start
    channels, (height, width) = source.shape[1], size
    # Channels last: every copy moves runs of (width x channels) contiguous values, and the
    # convolution and pooling kernels are fastest on this layout on CPU.
    maps = torch.empty(
        (regions, count, num_fills, height, width, channels),
        dtype=patch.dtype,
        device=patch.device,
    ).permute(0, 1, 2, 5, 3, 4)
    patches = patch.reshape(regions, count, num_fills, *patch.shape[1:])
    for region, insert in enumerate(inserts):
        (top, left), (r0, r1, c0, c1), (y, x) = insert.corner, insert.crop, insert.place
        bottom, right = y + r1 - r0, x + c1 - c0
        maps[region, :, :, :, y:bottom, x:right] = patches[region, :, :, :, r0:r1, c0:c1]
        # Only the frame around the patch comes from the cache, copied once per image and
        # broadcast over its fills.
        frame = (
            (0, y, 0, width),
            (bottom, height, 0, width),
            (y, bottom, 0, x),
            (y, bottom, right, width),
        )
        for f0, f1, g0, g1 in frame:
            if f0 < f1 and g0 < g1:
                maps[region, :, :, :, f0:f1, g0:g1] = source[
                    images, None, :, top + f0 : top + f1, left + g0 : left + g1
                ]
    return maps.reshape(regions * count * num_fills, channels, height, width)


def _input_patch(
    batch: _RegionBatch, images: Tensor, fill_images: Tensor, image_range: slice, fill_range: slice
) -> Tensor:
    """(G * nI * nV, C, h, w): the occluded inputs inside each region's bounding box.

    images : (n, C, H, W); fill_images : (V, n, C, H, W)
    """
    height, width = batch.route.box
    patches = []
    for mask, placement in zip(batch.masks, batch.placements, strict=True):
        top, left = placement.origin
        rows, cols = slice(top, top + height), slice(left, left + width)
        inside = images[image_range, None, :, rows, cols]
        fill = fill_images[fill_range, image_range, :, rows, cols].transpose(0, 1)
        patches.append(torch.where(mask, fill, inside))
    return torch.stack(patches).flatten(0, 2)


def _occluded_outputs(
    arch: _Architecture,
    calls: tuple[tuple[Callable[[Tensor], Tensor], ...], tuple[Callable[[Tensor], Tensor], ...]],
    cache: _Cache,
    batch: _RegionBatch,
    images: Tensor,
    fill_images: Tensor,
    image_range: slice,
    fill_range: slice,
    pad_counts: dict[int, Tensor],
) -> Tensor:
    """Model outputs (G, nI, nV, K) for the regions of `batch` x images x fills of the ranges.

    images : (n, C, H, W); fill_images : (V, n, C, H, W), the chunk's
    calls : fast forms of the spatial layers and of the head layers
    """
    spatial_calls, head_calls = calls
    route, placements = batch.route, batch.placements
    regions, count = len(placements), image_range.stop - image_range.start
    num_fills = fill_range.stop - fill_range.start
    patch = _input_patch(batch, images, fill_images, image_range, fill_range)
    steps = iter(enumerate(route.steps))
    for position in range(route.switch):
        layer = arch.spatial[position]
        if not isinstance(layer, _LocalLayer):
            patch = spatial_calls[position](patch)
            continue
        k, step = next(steps)
        window = _assemble(
            cache.padded[position],
            image_range,
            num_fills,
            step.window,
            patch,
            [p.steps[k] for p in placements],
        )
        patch = layer.on_window(window)
        if layer.exclude_pad:
            # Each region's output patch sits elsewhere on the map, so it has its own divisors.
            height, width = step.output
            counts = torch.stack(
                [
                    pad_counts[position][y : y + height, x : x + width]
                    for y, x in (p.outputs[k] for p in placements)
                ]
            )
            grouped = patch.reshape(regions, -1, *patch.shape[1:])
            patch = (grouped / counts[:, None, None]).flatten(0, 1)
    base = cache.activation(arch, route.switch)
    full = _assemble(
        base,
        image_range,
        num_fills,
        (base.shape[2], base.shape[3]),
        patch,
        [p.final for p in placements],
    )
    outputs = _run_layers(spatial_calls[route.switch :], full)
    outputs = _run_layers(head_calls, outputs)
    return outputs.reshape(regions, count, num_fills, -1)


# ----------------------------------------------------------------------------- entry point


def _check_inputs(
    model: nn.Module, images: Tensor, fill_images: Tensor, masks: Tensor, batch_size: int
) -> Tensor:
    """Validate the arguments; return fill_images expanded to (V, n, C, H, W)."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: expected an nn.Module, got {describe(model)}")
    for name, value in (("images", images), ("fill_images", fill_images), ("masks", masks)):
        if not isinstance(value, Tensor):
            raise InputTypeError(f"{name}: expected a torch.Tensor, got {describe(value)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputValueError(f"batch_size: expected a positive int, got {describe(batch_size)}")
    if images.ndim != 4 or not images.is_floating_point():
        raise InputValueError(
            f"images: expected a float tensor of shape (n, C, H, W), got {describe(images)}"
        )
    n, channels, height, width = images.shape
    if masks.ndim != 3 or masks.dtype != torch.bool or tuple(masks.shape[1:]) != (height, width):
        raise InputValueError(
            f"masks: expected a bool tensor of shape (R, {height}, {width}), got {describe(masks)}"
        )
    if fill_images.ndim != 5:
        raise InputValueError(
            f"fill_images: expected shape (V, {n}, {channels}, {height}, {width}), "
            f"got {describe(fill_images)}"
        )
    try:
        expanded = fill_images.expand(fill_images.shape[0], n, channels, height, width)
    except RuntimeError as error:
        raise InputValueError(
            f"fill_images: expected shape (V, {n}, {channels}, {height}, {width}) or one "
            f"broadcastable to it, got {describe(fill_images)}"
        ) from error
    for name, value in (("fill_images", fill_images), ("masks", masks)):
        if value.device != images.device:
            raise InputValueError(
                f"{name}: expected a tensor on the images' device {images.device}, got {value.device}"
            )
    if any(module.training for module in model.modules()):
        raise InputValueError(
            "model: expected a model in eval mode (call model.eval()), got one in training mode"
        )
    return expanded


def _ranges(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def run_incremental(
    model: nn.Module,
    images: Tensor,
    fill_images: Tensor,
    masks: Tensor,
    batch_size: int,
    *,
    dense_fraction: float = DENSE_SWITCH_FRACTION,
) -> Tensor:
    """Exact outputs of `model` on every occluded image, recomputing only what occlusion changes.

    model : a module for which ``unsupported_reason`` returns None, in eval mode
    images : Tensor, shape (n, C, H, W), float, on the model's device
    fill_images : Tensor, shape (V, n, C, H, W), or broadcastable to it (e.g. an expanded view
        of constant fills)
    masks : Tensor, shape (R, H, W), bool, same device; any shapes (grid cells, superpixels,
        overlapping windows)
    batch_size : int, about how many occluded images are processed at once (bounds memory)
    dense_fraction : float in [0, 1]; from the first convolution or pooling layer whose
        changed output covers more than this fraction of its map, layers run on full maps
        (0: everything but the region's input box runs in full; 1: patches all the way)
    returns : Tensor, shape (n, R, V, K): entry (i, r, v) equals
        ``model(torch.where(masks[r], fill_images[v, i], images[i])[None])[0]`` up to
        floating-point rounding (patches and full maps may use different convolution
        algorithms).
    """
    fills = _check_inputs(model, images, fill_images, masks, batch_size)
    if isinstance(dense_fraction, bool) or not isinstance(dense_fraction, int | float):
        raise InputTypeError(
            f"dense_fraction: expected a float in [0, 1], got {describe(dense_fraction)}"
        )
    if not 0.0 <= dense_fraction <= 1.0:
        raise InputValueError(f"dense_fraction: expected a float in [0, 1], got {dense_fraction!r}")
    n, channels, height, width = images.shape
    analysed = _analyse(model, (channels, height, width))
    if isinstance(analysed, str):
        raise InputValueError(
            f"model: expected a model the incremental engine supports; {analysed}"
        )
    arch = analysed
    num_fills, num_regions = fills.shape[0], masks.shape[0]
    device = images.device
    out = torch.empty(
        (n, num_regions, num_fills, arch.num_outputs), dtype=images.dtype, device=device
    )
    if out.numel() == 0:
        return out
    # A batch is (regions x images x fills). Images come in chunks that fill a batch with all
    # their fills (the unoccluded activations are cached per chunk, so the cache is about one
    # batch's forward); when that leaves room, several regions of one route share a batch.
    if num_fills <= batch_size:
        images_per_chunk, fills_per_batch = max(1, min(n, batch_size // num_fills)), num_fills
    else:
        images_per_chunk, fills_per_batch = 1, batch_size
    regions_per_batch = max(1, batch_size // (images_per_chunk * fills_per_batch))
    calls = (
        tuple(_fast_call(layer) for layer in arch.spatial),
        tuple(_fast_call(layer) for layer in arch.head),
    )
    with torch.inference_mode():
        batches, unaffected = _region_batches(arch, masks, regions_per_batch, dense_fraction)
        padded_at = {step.position for b in batches for step in b.route.steps}
        plain_at = {b.route.switch for b in batches} - padded_at
        pad_counts = {
            position: layer.pad_counts(device, images.dtype)
            for position, layer in enumerate(arch.spatial)
            if isinstance(layer, _LocalLayer) and layer.exclude_pad and position in padded_at
        }
        unaffected_ids = torch.tensor(unaffected, dtype=torch.long, device=device)
        for image_range in _ranges(n, images_per_chunk):
            chunk_images, chunk_fills = images[image_range], fills[:, image_range]
            chunk_out = out[image_range]
            cache = _build_cache(arch, chunk_images, padded_at, plain_at)
            chunk_out[:, unaffected_ids] = cache.baseline[:, None, None].to(out.dtype)
            local_images = slice(0, chunk_images.shape[0])
            for batch in batches:
                for fill_range in _ranges(num_fills, fills_per_batch):
                    outputs = _occluded_outputs(
                        arch,
                        calls,
                        cache,
                        batch,
                        chunk_images,
                        chunk_fills,
                        local_images,
                        fill_range,
                        pad_counts,
                    )
                    chunk_out[:, batch.regions, fill_range] = outputs.transpose(0, 1).to(out.dtype)
    return out
