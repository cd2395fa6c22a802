"""Box planning for the incremental engine: which part of every node an occlusion changes.

For one region, every node of the exported graph is in one of three states:

- unchanged: its value is the unoccluded one, read from the cache;
- a *patch*: only a box of its map (an interval along every spatial axis: rows x columns
  in 2D, a segment in 1D, a block in 3D) differs; the engine computes that box;
- *full*: the node is computed on whole maps (the first op that mixes all positions, or an
  op the engine does not follow, and everything after it).

The rules (Krypton, SIGMOD 2019, on a DAG), the same at every spatial rank (1, 2 or 3 axes,
each axis handled alike by `_Axis`): local ops (conv1d, conv2d and conv3d with any stride,
padding, dilation and groups; max and average pooling in 1D, 2D and 3D; pad) grow the box
to its projective field;
pointwise ops and ops that act per position across channels (batch norm, layer norm or
linear over a non-spatial last dim, permute, slicing channels, dropout in eval) keep it;
ops with several inputs (add, mul, where, cat along channels) take the bounding box of the
union of their inputs' boxes; anything else (mean over the spatial axes, adaptive pooling,
flatten, view, attention) makes the node full.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from torch import Tensor
from torch.fx import Node

from .boxes import Box, box_sides, box_volume, union_box

if TYPE_CHECKING:  # annotations only: graph.py imports this module's layout rules
    from .graph import ModelGraph, NodeInfo

__all__ = [
    "FULL",
    "LOCAL",
    "POINTWISE",
    "READS_PATCH_AS_IS",
    "GroupPlan",
    "LocalGeometry",
    "RegionPlan",
    "cap_box",
    "cat_channels",
    "cat_in_cache",
    "constant_cut",
    "dense_traffic",
    "greedy_merge",
    "group_part",
    "layout_rule",
    "local_geometry",
    "node_flops",
    "op_name",
    "peak_elements",
    "plan_groups",
    "plan_region",
    "read_window",
    "reads_patch_as_is",
]

FULL: Literal["full"] = "full"
State = Box | Literal["full"] | None

# Ops applied to each value (or to each position across non-spatial dims): a changed box
# stays the same box. Tensor arguments broadcast elementwise.
POINTWISE = frozenset(
    {
        "relu",
        "relu6",
        "hardtanh",
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "hardswish",
        "hardsigmoid",
        "leaky_relu",
        "elu",
        "celu",
        "selu",
        "mish",
        "softplus",
        "clamp",
        "clamp_min",
        "clamp_max",
        "add",
        "sub",
        "rsub",
        "mul",
        "div",
        "neg",
        "exp",
        "log",
        "abs",
        "sqrt",
        "rsqrt",
        "pow",
        "erf",
        "where",
        "clone",
        "alias",
        "_to_copy",
        "to",
        "contiguous",
        "detach",
        "maximum",
        "minimum",
    }
)
#: Convolutions and pools per spatial rank (their ATen names under torch.export).
CONVS = frozenset({"conv1d", "conv2d", "conv3d"})
MAX_POOLS = frozenset({"max_pool1d", "max_pool2d", "max_pool3d"})
AVG_POOLS = frozenset({"avg_pool1d", "avg_pool2d", "avg_pool3d"})
LOCAL = CONVS | MAX_POOLS | AVG_POOLS | {"pad", "constant_pad_nd"}
#: Local ops whose output is a new tensor: when the window they read is their input's patch
#: itself (a 1x1 conv, a stride-1 pool without padding on an inner box), they read the patch
#: as it is instead of a copy gathered from the cache with the patch written in. A pad is
#: left out: its output would be its input's tensor, which an in-place op could change.
READS_PATCH_AS_IS = CONVS | MAX_POOLS | AVG_POOLS


def reads_patch_as_is(node: Node, windows: tuple[Box, ...], source_state: object) -> bool:
    """Whether local `node` reads its input's patch without a gathered copy: its windows
    are the patch's boxes (which lie inside the map, so no padding is needed)."""
    return op_name(node) in READS_PATCH_AS_IS and windows == source_state


def cat_channels(node: Node, info: dict[Node, NodeInfo]) -> int | None:
    """The (non-negative) dim along which a planned cat joins its inputs (never a spatial
    axis or the batch: `layout_rule`), or None when `node` is no such cat."""
    if op_name(node) != "cat" or not isinstance(node.args[0], Sequence):
        return None
    rank = _rank(info[node])
    if rank is None:
        return None
    dim = _normal_dim(node.args[1] if len(node.args) > 1 else 0, rank)
    spatial = info[node].spatial
    if dim is None or dim == 0 or spatial is None or dim in spatial:
        return None
    return dim


def cat_in_cache(node: Node, info: dict[Node, NodeInfo], states: Mapping[Node, object]) -> bool:
    """Whether a cat on its boxes is best built in a window of its own cached value, with
    each changed input written into its slice, rather than by joining a window of every
    input: so when the inputs whose boxes differ from the cat's carry more channels than
    those on its boxes (DenseNet's running concatenation, where the old features changed
    on a box one ring smaller than the new ones). Joining gathers each such input's window
    and then copies everything once more; building in the cache copies the window once."""
    if cat_channels(node, info) is None:
        return False
    own = states.get(node)
    if not isinstance(own, tuple):
        return False
    inputs = [t for t in node.args[0] if isinstance(t, Node)]  # type: ignore[union-attr]
    other = sum(_per_position(t, info) for t in inputs if states.get(t) != own)
    same = sum(_per_position(t, info) for t in inputs if states.get(t) == own)
    return other > same


def op_name(node: Node) -> str:
    """The ATen op name of a call_function node ("conv2d", "add", ...), or "getitem"."""
    if node.target is operator.getitem:
        return "getitem"
    name = getattr(node.target, "_opname", None)
    return str(name) if name is not None else str(node.target)


def _rank(info: NodeInfo) -> int | None:
    return None if info.shape is None else len(info.shape) + 1


def _normal_dim(dim: object, rank: int) -> int | None:
    if isinstance(dim, bool) or not isinstance(dim, int):
        return None
    return dim % rank if -rank <= dim < rank else None


def _varying_inputs(node: Node, info: dict[Node, NodeInfo]) -> list[Node]:
    return [i for i in node.all_input_nodes if info[i].varying]


def _channels_first(layout: tuple[int, ...] | None, rank: int | None) -> bool:
    """Whether `layout` is that of an (N, C, *spatial) map of tensor rank `rank`."""
    return layout is not None and rank is not None and layout == tuple(range(2, rank))


def layout_rule(node: Node, info: dict[Node, NodeInfo]) -> tuple[int, ...] | None:
    """The spatial dims of a varying node's value, in the images' axis order, when the
    engine can follow a box through it; None when the node must be computed on whole maps."""
    name = op_name(node)
    own = info[node]
    rank = _rank(own)
    varying = _varying_inputs(node, info)
    if not varying:
        return None
    first = varying[0]
    source = info[first].spatial
    if name == "getitem":
        # The first output of a batch norm (its other outputs are empty saved statistics).
        index = node.args[1] if len(node.args) > 1 else None
        parent = node.args[0]
        if index == 0 and isinstance(parent, Node) and op_name(parent) in _NORMS:
            return info[parent].spatial
        return None
    if name in _NORMS:
        if node.args[0] is not first or len(varying) != 1:
            return None
        if not _channels_first(source, _rank(info[first])):
            return None
        if name == "batch_norm" and node.args[5] is not False:
            return None
        return source
    if rank is None or source is None:
        return None
    if name in LOCAL:
        # A local op of k spatial axes reads an (N, C, *k axes) map whose axes are the
        # images' (a conv after a permute to channels last is no such op).
        return source if _channels_first(source, rank) and node.args[0] is first else None
    if name in POINTWISE:
        return _pointwise_layout(node, info, rank)
    if name == "dropout":
        return source if len(node.args) > 2 and node.args[2] is False else None
    if len(varying) != 1 or node.args[0] is not first:
        return _cat_layout(node, info, rank) if name == "cat" else None
    if name == "permute":
        dims = [_normal_dim(d, rank) for d in node.args[1]]  # type: ignore[union-attr]
        if None in dims or dims[0] != 0:
            return None
        return tuple(dims.index(axis) for axis in source)
    if name == "cat":
        return _cat_layout(node, info, rank)
    if name == "slice":
        dim = _normal_dim(node.args[1] if len(node.args) > 1 else 0, rank)
        if dim is None or dim in source:
            return None
        if dim == 0:
            start = node.args[2] if len(node.args) > 2 else None
            end = node.args[3] if len(node.args) > 3 else None
            step = node.args[4] if len(node.args) > 4 else 1
            whole = start in (None, 0) and (end is None or (isinstance(end, int) and end >= 2**62))
            return source if whole and step == 1 else None
        return source
    if name in _REDUCTIONS:
        return _reduction_layout(node, info, source)
    if name == "layer_norm":
        normalized = node.args[1]
        count = len(normalized) if isinstance(normalized, Sequence) else 0
        return source if count and max(source) < rank - count else None
    if name == "linear":
        return source if max(source) < rank - 1 else None
    return None


_NORMS = frozenset({"_native_batch_norm_legit_no_training", "batch_norm"})
# Reductions over dims other than the batch and the spatial axes (a mean over channels, as
# in spatial attention) act per position: a changed box stays the same box.
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})


def _reduction_layout(
    node: Node, info: dict[Node, NodeInfo], source: tuple[int, ...]
) -> tuple[int, ...] | None:
    in_rank = _rank(info[node.all_input_nodes[0]])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if in_rank is None or dims is None or node.kwargs.get("dtype") is not None:
        return None
    listed = dims if isinstance(dims, Sequence) else [dims]
    reduced = [_normal_dim(d, in_rank) for d in listed]
    if not reduced or None in reduced or 0 in reduced or any(d in source for d in reduced):
        return None
    if keepdim is True:
        return source
    return tuple(axis - sum(1 for d in reduced if d is not None and d < axis) for axis in source)


def _pointwise_layout(node: Node, info: dict[Node, NodeInfo], rank: int) -> tuple[int, ...] | None:
    own_shape = info[node].shape
    found: tuple[int, ...] | None = None
    for arg in node.all_input_nodes:
        facts = info[arg]
        if not facts.varying:
            continue
        arg_rank = _rank(facts)
        if facts.spatial is None or arg_rank is None or facts.shape is None or own_shape is None:
            return None
        shift = rank - arg_rank
        aligned = tuple(axis + shift for axis in facts.spatial)
        # A varying input broadcast along a spatial axis (e.g. a squeeze-excitation scale)
        # is a full node: it changes every position.
        sizes = tuple(facts.shape[axis - 1] for axis in facts.spatial)
        if sizes != tuple(own_shape[axis - 1] for axis in aligned):
            return None
        if found is not None and found != aligned:
            return None
        found = aligned
    return found


def _cat_layout(node: Node, info: dict[Node, NodeInfo], rank: int) -> tuple[int, ...] | None:
    tensors = node.args[0]
    if not isinstance(tensors, Sequence):
        return None
    dim = _normal_dim(node.args[1] if len(node.args) > 1 else 0, rank)
    layouts = {
        info[t].spatial if isinstance(t, Node) and info[t].varying else None for t in tensors
    }
    if len(layouts) != 1 or None in layouts or dim is None or dim == 0:
        return None
    layout = layouts.pop()
    if layout is None or dim in layout:
        return None
    return layout


# ----------------------------------------------------------------------------- local ops


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a local op: output o reads padded inputs o * stride + t * dilation
    (t < kernel); padded position q is input position q - pad_before."""

    kernel: int
    stride: int
    dilation: int
    pad_before: int
    in_size: int
    out_size: int

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def affected(self, start: int, stop: int) -> tuple[int, int]:
        """Outputs [lo, hi) whose receptive fields meet inputs [start, stop)."""
        lo = max(0, -((self.extent - 1 - start - self.pad_before) // self.stride))
        hi = min(self.out_size, (stop - 1 + self.pad_before) // self.stride + 1)
        return lo, hi

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        """Input positions [start, stop) that outputs [lo, hi) read (may reach into padding)."""
        start = lo * self.stride - self.pad_before
        return start, start + (hi - 1 - lo) * self.stride + self.extent


@dataclass(frozen=True)
class LocalGeometry:
    """How to compute a local op's changed output box from a window of its input.

    output : the changed box of the output map
    window : the input box the output box reads, in input coordinates (may cross the border)
    pad_value : what lies beyond the border for this op (0 for conv, -inf for max pooling)
    whole : the window crosses a border whose values are not a constant (reflect, replicate
        or circular padding, average pooling that excludes padding): the op is then run on
        the whole input map and the box cut from its output
    """

    output: Box
    window: Box
    pad_value: float
    whole: bool


def _ints(value: object, count: int, default: int) -> list[int] | None:
    if value is None:
        return [default] * count
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * count
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
        if len(items) == 1:
            items = items * count
        if len(items) == count and all(isinstance(v, int) for v in items):
            return [int(v) for v in items]
    return None


def _arg(node: Node, index: int, name: str, default: object) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# Keys of what the planner keeps in a node's ``meta`` (the graph is the library's own
# export): a local op's axes, and its geometry per changed box. Planning 2,809 sliding
# windows asks for the same node's geometry about 150,000 times, for few distinct boxes.
_AXES_KEY = "occlusion_probe_axes"
_GEOMETRY_KEY = "occlusion_probe_geometry"

#: A local op's axes (one per spatial axis, in order), its pad value and its border kind.
Axes = tuple[tuple[_Axis, ...], float, str]


def _axes(node: Node, info: dict[Node, NodeInfo]) -> Axes | None:
    """The spatial axes, pad value and border kind ("constant" or "whole") of a local op
    (read once per node and kept in its meta)."""
    kept = node.meta.get(_AXES_KEY)
    if kept is not None and kept[0] is info:
        return kept[1]  # type: ignore[no-any-return]
    axes = _read_axes(node, info)
    node.meta[_AXES_KEY] = (info, axes)
    return axes


def _op_rank(name: str) -> int | None:
    """The spatial rank a conv or pool op works on ("conv3d": 3), None for other ops."""
    if name in CONVS or name in MAX_POOLS or name in AVG_POOLS:
        return int(name[-2])
    return None


def _pad_axes(node: Node, name: str, sizes: tuple[tuple[int, ...], tuple[int, ...]]) -> Axes | None:
    """A pad's axes: its pads list the last axis first, (before, after) each, and may leave
    out leading spatial axes (unpadded); pads of the channels make no patch."""
    rank = len(sizes[0])
    pads_arg = node.args[1]
    if not isinstance(pads_arg, Sequence) or len(pads_arg) % 2 or len(pads_arg) > 2 * rank:
        return None
    pads = _ints(pads_arg, len(pads_arg), 0) if pads_arg else []
    if pads is None:
        return None
    mode = _arg(node, 2, "mode", "constant") if name == "pad" else "constant"
    value = _arg(node, 3 if name == "pad" else 2, "value", 0.0)
    fill = 0.0 if value is None else float(value)  # type: ignore[arg-type]
    axes = []
    for a in range(rank):
        from_end = rank - 1 - a
        before = pads[2 * from_end] if 2 * from_end < len(pads) else 0
        axes.append(_Axis(1, 1, 1, before, sizes[0][a], sizes[1][a]))
    return tuple(axes), fill, "constant" if mode == "constant" else "whole"


def _read_axes(node: Node, info: dict[Node, NodeInfo]) -> Axes | None:
    name = op_name(node)
    source = node.args[0]
    if not isinstance(source, Node):
        return None
    in_shape, out_shape = info[source].shape, info[node].shape
    spatial = info[source].spatial
    if in_shape is None or out_shape is None or spatial is None:
        return None
    rank = len(spatial)
    if len(in_shape) != rank + 1 or len(out_shape) != rank + 1:
        return None
    sizes = in_shape[1:], out_shape[1:]
    if name in ("pad", "constant_pad_nd"):
        return _pad_axes(node, name, sizes)
    if _op_rank(name) != rank:
        return None
    if name in CONVS:
        weight = node.args[1]
        if not isinstance(weight, Node) or info[weight].varying:
            return None
        value = weight.meta.get("val")
        if not isinstance(value, Tensor) or value.dim() != rank + 2:
            return None
        kernel = [int(k) for k in value.shape[2:]]
        stride = _ints(_arg(node, 3, "stride", 1), rank, 1)
        dilation = _ints(_arg(node, 5, "dilation", 1), rank, 1)
        padding_arg = _arg(node, 4, "padding", 0)
        if stride is None or dilation is None:
            return None
        if padding_arg == "valid":
            padding: list[int] | None = [0] * rank
        elif padding_arg == "same":
            # PyTorch puts the odd extra position of 'same' after; the output size is the
            # input size, so only pad_before matters here.
            padding = [dilation[a] * (kernel[a] - 1) // 2 for a in range(rank)]
        else:
            padding = _ints(padding_arg, rank, 0)
        if padding is None:
            return None
        axes = tuple(
            _Axis(kernel[a], stride[a], dilation[a], padding[a], sizes[0][a], sizes[1][a])
            for a in range(rank)
        )
        return axes, 0.0, "constant"
    kernel_arg = _ints(node.args[1], rank, 1)
    if kernel_arg is None:
        return None
    stride_value = _arg(node, 2, "stride", None)
    stride = kernel_arg if stride_value in (None, []) else _ints(stride_value, rank, 1)
    padding = _ints(_arg(node, 3, "padding", 0), rank, 0)
    if stride is None or padding is None:
        return None
    if name in MAX_POOLS:
        dilation = _ints(_arg(node, 4, "dilation", 1), rank, 1)
        if dilation is None:
            return None
        axes = tuple(
            _Axis(kernel_arg[a], stride[a], dilation[a], padding[a], sizes[0][a], sizes[1][a])
            for a in range(rank)
        )
        # Max pooling ignores what lies outside the input, as -inf does (ceil_mode included).
        return axes, -math.inf, "constant"
    ceil = bool(_arg(node, 4, "ceil_mode", False))
    include_pad = bool(_arg(node, 5, "count_include_pad", True))
    axes = tuple(
        _Axis(kernel_arg[a], stride[a], 1, padding[a], sizes[0][a], sizes[1][a])
        for a in range(rank)
    )
    # With padding counted and no ceil_mode every window lies within the padded input and
    # is divided by the kernel volume (or divisor_override), so zeros beyond the border
    # are exact; otherwise the divisor depends on the position.
    kind = "constant" if include_pad and not ceil else "whole"
    return axes, 0.0, kind


def local_geometry(node: Node, info: dict[Node, NodeInfo], box: Box) -> LocalGeometry | None:
    """The output box a changed input `box` gives at local op `node`, and the window it reads
    (kept per node and box)."""
    kept = node.meta.get(_GEOMETRY_KEY)
    if kept is None or kept[0] is not info:
        kept = (info, {})
        node.meta[_GEOMETRY_KEY] = kept
    known: dict[Box, LocalGeometry | None] = kept[1]
    if box in known:
        return known[box]
    geometry = _local_geometry(node, info, box)
    known[box] = geometry
    return geometry


def _local_geometry(node: Node, info: dict[Node, NodeInfo], box: Box) -> LocalGeometry | None:
    found = _axes(node, info)
    if found is None:
        return None
    axes, pad_value, kind = found
    if len(box) != 2 * len(axes):
        return None
    reached = [axis.affected(box[2 * a], box[2 * a + 1]) for a, axis in enumerate(axes)]
    if any(lo >= hi for lo, hi in reached):
        # A stride larger than the kernel may skip the box: no output changes. Keep a
        # one-position box so that the state stays a patch (its values are unchanged ones).
        reached = [
            (min(lo, axis.out_size - 1), min(lo, axis.out_size - 1) + 1)
            for (lo, _hi), axis in zip(reached, axes, strict=True)
        ]
    window = tuple(
        v for (lo, hi), axis in zip(reached, axes, strict=True) for v in axis.window(lo, hi)
    )
    crosses = _crosses(window, axes)
    whole = kind == "whole" and (crosses or _near_border(op_name(node), box, axes))
    if whole:
        return LocalGeometry(
            tuple(v for axis in axes for v in (0, axis.out_size)), window, pad_value, True
        )
    return LocalGeometry(tuple(v for pair in reached for v in pair), window, pad_value, False)


def _crosses(window: Box, axes: tuple[_Axis, ...]) -> bool:
    """Whether `window` reaches past the input's border along some axis."""
    return any(window[2 * a] < 0 or window[2 * a + 1] > axis.in_size for a, axis in enumerate(axes))


def _near_border(name: str, box: Box, axes: tuple[_Axis, ...]) -> bool:
    """Whether a reflect / replicate / circular pad copies part of `box` into the padding."""
    if name != "pad":
        return False
    for a, axis in enumerate(axes):
        reach = max(axis.pad_before, axis.out_size - axis.in_size - axis.pad_before) + 1
        if box[2 * a] < reach or box[2 * a + 1] > axis.in_size - reach:
            return True
    return False


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True, eq=False)
class RegionPlan:
    """The state of every node for one region: a box (a patch), FULL, or absent (unchanged)."""

    states: dict[Node, Box | Literal["full"]]
    flops: int

    def state(self, node: Node) -> State:
        return self.states.get(node)


def _map_size(info: NodeInfo) -> tuple[int, ...]:
    """The sizes of a map's spatial axes, in order."""
    if info.shape is None or info.spatial is None:
        raise ValueError("a patch node needs a spatial shape")
    return tuple(info.shape[axis - 1] for axis in info.spatial)


def cap_box(box: Box, size: tuple[int, ...], threshold: float) -> Box:
    """`box` capped at `threshold` of a map of `size` (one size per spatial axis):
    Krypton's projective-field threshold.

    A side longer than ``max(1, ceil(threshold * map side))`` is cut to that length, centred
    on the box's centre and shifted to stay inside the map; shorter sides are kept.
    """
    out = list(box)
    for a, side in enumerate(size):
        start, stop = box[2 * a], box[2 * a + 1]
        limit = max(1, math.ceil(threshold * side))
        if stop - start > limit:
            start = max(0, min(side - limit, (start + stop - limit) // 2))
            out[2 * a], out[2 * a + 1] = start, start + limit
    return tuple(out)


def plan_region(graph: ModelGraph, box: Box | None, threshold: float | None = None) -> RegionPlan:
    """Plan one region whose input changes inside `box` (None: an empty region).

    threshold : None (exact), or a fraction in (0, 1): every changed box after the input is
        capped at that fraction of its map's size along every axis (`cap_box`) and the
        values outside the cap are taken unchanged from the unoccluded images. This
        approximates (Krypton's projective-field threshold); local ops that run on whole
        maps (non-constant padding) are not capped.
    """
    states: dict[Node, Box | Literal["full"]] = {}
    if box is None:
        return RegionPlan(states, 0)
    info = graph.info
    flops = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            states[node] = box
            continue
        if node.op != "call_function":
            continue
        inputs = [states.get(i) for i in node.all_input_nodes if info[i].varying]
        changed = [s for s in inputs if s is not None]
        if not changed:
            continue
        facts = info[node]
        state: Box | Literal["full"] = FULL
        if FULL not in changed and facts.spatial is not None:
            boxes = [s for s in changed if s != FULL]
            name = op_name(node)
            capped = threshold is not None
            if name in LOCAL:
                geometry = local_geometry(node, info, boxes[0])
                if geometry is not None:
                    state = geometry.output
                    capped = capped and not geometry.whole
            else:
                state = union_box(boxes)
            if capped and state != FULL and threshold is not None:
                state = cap_box(state, _map_size(_box_facts(node, info)), threshold)
        states[node] = state
        flops += node_flops(node, info, state)
    return RegionPlan(states, flops)


def _box_facts(node: Node, info: dict[Node, NodeInfo]) -> NodeInfo:
    """The facts of the map a box of `node` lies in (a batch norm's: its input's)."""
    facts = info[node]
    if facts.shape is None and node.all_input_nodes:
        facts = info[node.all_input_nodes[0]]
    return facts


def node_flops(node: Node, info: dict[Node, NodeInfo], state: State) -> int:
    """Multiply-add FLOPs (x2) per occluded image of a convolution (any rank) or linear node
    in `state` (0 for other ops, which are memory-bound and cheap next to these)."""
    if state is None:
        return 0
    name = op_name(node)
    facts = info[node]
    if facts.shape is None or (name not in CONVS and name != "linear"):
        return 0
    weight = node.args[1]
    value = weight.meta.get("val") if isinstance(weight, Node) else None
    if not isinstance(value, Tensor):
        return 0
    per_output = math.prod(value.shape[1:]) if name in CONVS else int(value.shape[1])
    positions = math.prod(facts.shape)
    if state != FULL and facts.spatial is not None:
        positions = positions // math.prod(_map_size(facts)) * box_volume(state)
    return 2 * positions * per_output


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True, eq=False)
class GroupPlan:
    """Regions computed together: at every changed node each member has a box of one shape.

    members : the region indices
    states : per changed node, one box per member (equal shapes), or FULL
    windows : per local node on boxes, one input window per member (equal shapes), the pad
        value beyond the border, and whether the op runs on whole maps instead
    flops : FLOPs per occluded image (convolutions and linear), on the group's boxes
    traffic : tensor elements read and written per occluded image, the engine's window
        gathers and patch writes included (see `dense_traffic`)
    """

    members: tuple[int, ...]
    states: dict[Node, tuple[Box, ...] | Literal["full"]]
    windows: dict[Node, tuple[tuple[Box, ...], float, bool]]
    flops: int
    traffic: int


def _grown(box: Box, sides: tuple[int, ...], size: tuple[int, ...]) -> Box:
    """`box` grown to `sides` (one length per axis), shifted to stay inside a map of `size`."""
    out: list[int] = []
    for a, (side, limit) in enumerate(zip(sides, size, strict=True)):
        start = max(0, min(box[2 * a], limit - side))
        out += (start, start + side)
    return tuple(out)


def constant_cut(graph: ModelGraph, node: Node, constant: Node) -> tuple[int | None, ...]:
    """Per spatial axis of `node`, the dim of `constant` that broadcasts against it with a
    size above 1, or None (empty when it has none): those are cut to the node's box."""
    spatial = graph.info[node].spatial
    value = constant.meta.get("val")
    own_shape = graph.info[node].shape
    if spatial is None or own_shape is None or op_name(node) not in POINTWISE:
        return ()
    if not isinstance(value, Tensor):
        return ()
    shift = value.dim() - (len(own_shape) + 1)
    dims = tuple(
        dim + shift if dim + shift >= 0 and value.shape[dim + shift] > 1 else None
        for dim in spatial
    )
    return dims if any(d is not None for d in dims) else ()


def _group_key(graph: ModelGraph, plan: RegionPlan, box: Box) -> tuple[object, ...]:
    """Regions with one key have the same nodes changed, in the same way (box, full or
    whole-map local op), from input boxes of one shape."""
    parts: list[object] = list(box_sides(box))
    for node, state in plan.states.items():
        if node.op != "call_function":
            continue
        kind = "full" if state == FULL else "box"
        if kind == "box" and op_name(node) in LOCAL:
            source = node.args[0]
            source_box = plan.state(source) if isinstance(source, Node) else None
            if isinstance(source_box, tuple):
                geometry = local_geometry(node, graph.info, source_box)
                if geometry is not None and geometry.whole:
                    kind = "whole"
        parts.append((node.name, kind))
        if kind == "box" and any(
            constant_cut(graph, node, arg)
            for arg in node.all_input_nodes
            if not graph.info[arg].varying
        ):
            # A constant with spatial axes is cut at the node's box: members must share it.
            parts.append(state)
    return tuple(parts)


def read_window(
    node: Node, info: dict[Node, NodeInfo], output: Box
) -> tuple[Box, float, bool] | None:
    """The input window local op `node` reads for its `output` box, the pad value beyond the
    border, and whether the op needs its whole input map there (non-constant padding)."""
    found = _axes(node, info)
    if found is None:
        return None
    axes, pad_value, kind = found
    window = tuple(
        v for a, axis in enumerate(axes) for v in axis.window(output[2 * a], output[2 * a + 1])
    )
    clipped = tuple(
        v
        for a, axis in enumerate(axes)
        for v in (max(window[2 * a], 0), min(window[2 * a + 1], axis.in_size))
    )
    crosses = _crosses(window, axes)
    whole = kind == "whole" and (crosses or _near_border(op_name(node), clipped, axes))
    return window, pad_value, whole


def _group_plan(
    graph: ModelGraph, plans: Sequence[RegionPlan], members: tuple[int, ...]
) -> GroupPlan | None:
    """The members' boxes grown to common shapes; None when a grown window would need a
    whole map where a member's own plan does not (the members then run alone)."""
    info = graph.info
    first = plans[members[0]]
    states: dict[Node, tuple[Box, ...] | Literal["full"]] = {}
    windows: dict[Node, tuple[tuple[Box, ...], float, bool]] = {}
    flops = 0
    traffic = 0
    for node, state in first.states.items():
        if state == FULL:
            states[node] = FULL
            flops += node_flops(node, info, FULL)
            traffic += _full_traffic(node, info, states)
            continue
        own = [plans[r].states[node] for r in members]
        boxes_in = [b for b in own if isinstance(b, tuple)]
        sides = tuple(max(lengths) for lengths in zip(*map(box_sides, boxes_in), strict=True))
        facts = info[node]
        if facts.shape is None and node.all_input_nodes:
            # A batch norm returns (output, saved statistics): its map is its input's.
            facts = info[node.all_input_nodes[0]]
        if facts.spatial is None or facts.shape is None:
            raise RuntimeError(f"node {node.name} has a box but no spatial axes")
        size = _map_size(facts)
        grown = tuple(_grown(b, sides, size) for b in boxes_in)
        states[node] = grown
        flops += node_flops(node, info, grown[0])
        if node.op == "call_function" and op_name(node) not in LOCAL:
            traffic += _box_traffic(node, info, states)
        if node.op == "call_function" and op_name(node) in LOCAL:
            source = node.args[0]
            source_box = first.state(source) if isinstance(source, Node) else None
            geometry = (
                local_geometry(node, info, source_box) if isinstance(source_box, tuple) else None
            )
            reads = [read_window(node, info, box) for box in grown]
            if geometry is None or any(r is None for r in reads):
                return None
            if geometry.whole:
                windows[node] = ((), geometry.pad_value, True)
                traffic += _local_traffic(node, info, states, None)
                continue
            found = [r for r in reads if r is not None]
            if any(r[2] for r in found):
                return None
            windows[node] = (tuple(r[0] for r in found), found[0][1], False)
            traffic += _local_traffic(node, info, states, windows[node][0])
    return GroupPlan(members, states, windows, flops, traffic)


def plan_groups(
    graph: ModelGraph,
    plans: Sequence[RegionPlan],
    boxes: Sequence[Box | None],
    call_flops: float = 0.0,
) -> list[GroupPlan]:
    """Group the non-empty regions so that each group runs every op once for all members.

    Regions with the same nodes changed in the same way (`_group_key`) are split into
    classes whose own boxes have equal shapes at every node, so that no box is grown; then
    classes are merged while a merge saves more in op calls than it adds in FLOPs (see
    `_merge_classes`): `call_flops` is what one op call costs beyond its arithmetic, in
    FLOPs per occluded image of a member (0: never merge). Merged members' boxes are grown
    to the largest of the group at each node (recomputing a few unchanged values, which is
    exact); regions whose grown windows would change how a border is handled run in their
    own classes, or alone.
    """
    keyed: dict[tuple[object, ...], list[int]] = {}
    for region, box in enumerate(boxes):
        if box is not None:
            keyed.setdefault(_group_key(graph, plans[region], box), []).append(region)
    groups: list[GroupPlan] = []
    for members in keyed.values():
        shapes, classes = _shape_classes(plans, members)
        for merged in _merge_classes(graph, plans, shapes, classes, call_flops):
            groups.extend(_plan_or_split(graph, plans, merged, classes))
    return groups


def _box_shapes(plan: RegionPlan) -> tuple[tuple[int, ...], ...]:
    """The sides of every box of `plan`, in node order."""
    return tuple(box_sides(state) for state in plan.states.values() if isinstance(state, tuple))


Shapes = tuple[tuple[int, ...], ...]


def _shape_classes(
    plans: Sequence[RegionPlan], members: list[int]
) -> tuple[list[Shapes], list[tuple[int, ...]]]:
    """`members` split by the shapes of their boxes (members of one key share their nodes):
    each class's box shapes, and its members."""
    classes: dict[Shapes, list[int]] = {}
    for region in members:
        classes.setdefault(_box_shapes(plans[region]), []).append(region)
    return list(classes), [tuple(c) for c in classes.values()]


def _merge_classes(
    graph: ModelGraph,
    plans: Sequence[RegionPlan],
    shapes: list[Shapes],
    classes: list[tuple[int, ...]],
    call_flops: float,
) -> list[tuple[int, ...]]:
    """Greedy agglomeration of shape classes: merge the pair whose merge lowers the cost most,
    until none does. The cost of a group G is |G| F(G) + calls(G) * call_flops, F(G) the
    conv2d and linear FLOPs per occluded image on boxes of G's largest shapes and calls(G)
    the ops run on boxes (one call each per group). Corner and edge classes of a grid are
    small, so they join their neighbours when few images are occluded per call."""
    if len(classes) < 2 or call_flops <= 0:
        return classes
    first = plans[classes[0][0]]
    nodes = [node for node, state in first.states.items() if isinstance(state, tuple)]
    # FLOPs per box position of each node (convolutions and linear; 0 for the others).
    unit = (0, 1) * len(shapes[0][0]) if shapes[0] else (0, 1)
    weights = [node_flops(node, graph.info, unit) for node in nodes]
    heavy = [i for i, w in enumerate(weights) if w > 0]
    if not heavy:
        return [tuple(m for c in classes for m in c)]
    calls = len([n for n in nodes if n.op == "call_function"]) * call_flops
    weight = np.array([weights[i] for i in heavy], dtype=np.float64)
    sides = np.array([[shape[i] for i in heavy] for shape in shapes])
    merged = greedy_merge(sides, [len(c) for c in classes], weight, calls)
    return [tuple(m for index in group for m in classes[index]) for group in merged]


def greedy_merge(
    sides: np.ndarray, sizes: Sequence[int], weight: np.ndarray, calls: float
) -> list[list[int]]:
    """Greedy agglomeration: merge the pair of classes whose merge lowers the total cost
    most (the first such pair in row-major order on ties), until none does.

    sides : array, shape (N, M, d): each class's box sides along the d spatial axes at M
        nodes (a merged class's box has the larger side along every axis)
    sizes : the members of each class
    weight : array, shape (M,): FLOPs per box position at each node
    calls : the cost of one group's op calls, in FLOPs
    returns : the merged groups, as lists of class indices, in order of their first class
    """
    sides = sides.astype(np.float64)
    size = np.asarray(sizes, dtype=np.float64)
    cost = size * (sides.prod(axis=-1) @ weight)  # |G| F(G) per class
    members = [[index] for index in range(len(size))]
    alive = np.ones(len(size), dtype=bool)

    def gains(i: int) -> np.ndarray:
        """What merging class i with each class saves (-inf for itself and merged ones)."""
        volume = np.maximum(sides[i], sides).prod(axis=-1)
        merged = (size[i] + size) * (volume @ weight)
        saved = calls - (merged - cost[i] - cost)
        saved[~alive] = -np.inf
        saved[i] = -np.inf
        return np.asarray(saved, dtype=np.float64)

    if len(size) < 2:
        return members
    table = np.stack([gains(i) for i in range(len(size))])
    # Each row's best partner (the first maximum), so that a step scans rows, not the table
    # (a ResNet-18 heat map has hundreds of classes; a full scan per merge took seconds).
    best_value = table.max(axis=1)
    best_index = table.argmax(axis=1)
    while alive.sum() > 1:
        # The table's first maximum in row-major order, as np.argmax(table) would pick.
        i = int(np.argmax(best_value))
        j = int(best_index[i])
        if best_value[i] <= 0:
            break
        members[i].extend(members[j])
        members[j] = []
        sides[i] = np.maximum(sides[i], sides[j])
        size[i] += size[j]
        cost[i] = size[i] * (sides[i].prod(axis=-1) @ weight)
        alive[j] = False
        table[j, :] = -np.inf
        table[:, j] = -np.inf
        merged = gains(i)
        table[i, :] = merged
        table[:, i] = merged
        best_value[j] = -np.inf
        # Rows whose best partner was i or j are scanned again; the others may now prefer i.
        stale = (best_index == i) | (best_index == j)
        stale[i] = True
        stale[j] = False
        for k in np.flatnonzero(stale):
            best_index[k] = int(np.argmax(table[k]))
            best_value[k] = table[k, best_index[k]]
        fresh = ~stale
        fresh[j] = False
        better = fresh & ((merged > best_value) | ((merged == best_value) & (i < best_index)))
        best_value[better] = merged[better]
        best_index[better] = i
    return [group for group in members if group]


def _plan_or_split(
    graph: ModelGraph,
    plans: Sequence[RegionPlan],
    merged: tuple[int, ...],
    classes: list[tuple[int, ...]],
) -> list[GroupPlan]:
    """The group plan of `merged`; when its grown windows would handle a border differently
    than a member's own plan, its shape classes apart, and failing that each region alone."""
    plan = _group_plan(graph, plans, merged)
    if plan is not None:
        return [plan]
    inside = set(merged)
    parts = [c for c in classes if c[0] in inside]
    if len(parts) == 1:  # the class itself failed
        return _alone(graph, plans, merged)
    groups: list[GroupPlan] = []
    for part in parts:
        plan = _group_plan(graph, plans, part)
        groups.extend([plan] if plan is not None else _alone(graph, plans, part))
    return groups


def _alone(
    graph: ModelGraph, plans: Sequence[RegionPlan], members: tuple[int, ...]
) -> list[GroupPlan]:
    groups: list[GroupPlan] = []
    for region in members:
        alone = _group_plan(graph, plans, (region,))
        if alone is None:
            raise RuntimeError(f"region {region} cannot be planned on its own")
        groups.append(alone)
    return groups


def group_part(group: GroupPlan, start: int, stop: int) -> GroupPlan:
    """Members [start, stop) of `group`, with their boxes and windows."""
    states: dict[Node, tuple[Box, ...] | Literal["full"]] = {
        node: state if state == FULL else state[start:stop] for node, state in group.states.items()
    }
    windows = {
        node: (boxes[start:stop], pad, whole) for node, (boxes, pad, whole) in group.windows.items()
    }
    return GroupPlan(group.members[start:stop], states, windows, group.flops, group.traffic)


# ----------------------------------------------------------------------------- traffic
#
# FLOPs alone misjudge memory-bound models: DenseNet-121's plan runs about 2.2x fewer conv
# FLOPs than dense, but batch norm, ReLU, cat and copies take most of the engine's time, so
# the elements each op reads and writes (with the copies the engine adds) are counted too
# (docs/performance.md, "DenseNet-121 stays near 1.4x").

# Ops that move no elements: views and a batch norm's tuple element.
_NO_TRAFFIC = frozenset(
    {
        "getitem",
        "reshape",
        "view",
        "_unsafe_view",
        "permute",
        "expand",
        "flatten",
        "alias",
        "detach",
        "unsqueeze",
        "squeeze",
        "t",
        "transpose",
        "slice",
        "select",
    }
)


def _tensor_shape(node: Node) -> tuple[int, ...] | None:
    """One image's shape of `node`'s tensor (a batch norm's tuple: its first element's);
    None for a shape query or another value that is no tensor."""
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, Tensor) or value.dim() == 0:
        return None
    sizes = tuple(value.shape[1:])
    return sizes if all(isinstance(size, int) for size in sizes) else None


def _elements(node: Node, info: dict[Node, NodeInfo]) -> int:
    """Elements of one image's value of `node` (0 when it is no tensor)."""
    shape = _tensor_shape(node)
    return 0 if shape is None else math.prod(shape)


def _per_position(node: Node, info: dict[Node, NodeInfo]) -> int:
    """Elements of one image's value of `node` at one spatial position."""
    facts = info[node]
    if facts.shape is None and node.all_input_nodes:
        facts = info[node.all_input_nodes[0]]  # a batch norm's tuple: its input's map
    if facts.shape is None or facts.spatial is None:
        return 0
    return _elements(node, info) // math.prod(_map_size(facts))


_area = box_volume


def _patch_box(state: object) -> Box | None:
    """The first member's box of a grown state, or None (unchanged or full)."""
    if isinstance(state, tuple) and state and isinstance(state[0], tuple):
        return state[0]
    return None


def dense_traffic(graph: ModelGraph) -> int:
    """Tensor elements read and written per image by one forward of the whole graph: every
    op that depends on the images reads its inputs once and writes its output once."""
    info = graph.info
    total = 0
    for node in graph.nodes:
        if node.op != "call_function" or not info[node].varying:
            continue
        if op_name(node) in _NO_TRAFFIC or _tensor_shape(node) is None:
            continue
        total += _elements(node, info)
        total += sum(_elements(i, info) for i in _varying_inputs(node, info))
    return total


def _full_traffic(
    node: Node, info: dict[Node, NodeInfo], states: dict[Node, tuple[Box, ...] | Literal["full"]]
) -> int:
    """A node run on whole maps: as dense, plus a copy of the cached map for every input
    that is a patch (the patch is written into it; also before a view such as a flatten)."""
    if node.op != "call_function" or _tensor_shape(node) is None:
        return 0  # a shape query reads no elements
    moves = op_name(node) not in _NO_TRAFFIC
    total = _elements(node, info) if moves else 0
    for source in _varying_inputs(node, info):
        total += _elements(source, info) if moves else 0
        patch = _patch_box(states.get(source))
        if patch is not None:
            total += 2 * _elements(source, info) + 2 * _per_position(source, info) * _area(patch)
    return total


def _gathered(
    source: Node,
    info: dict[Node, NodeInfo],
    states: dict[Node, tuple[Box, ...] | Literal["full"]],
    window: Box,
) -> int:
    """Elements moved to cut `window` of `source` from the cache and write its patch in."""
    per_position = _per_position(source, info)
    total = 2 * per_position * _area(window)
    patch = _patch_box(states.get(source))
    if patch is not None:
        total += 2 * per_position * _area(patch)
    return total


def _box_traffic(
    node: Node, info: dict[Node, NodeInfo], states: dict[Node, tuple[Box, ...] | Literal["full"]]
) -> int:
    """A pointwise or per-position node on its box: it reads each input there (gathered
    from the cache unless the input is a patch on the same box) and writes the box."""
    if op_name(node) in _NO_TRAFFIC:
        return 0
    box = _patch_box(states.get(node))
    if box is None:
        return 0
    if cat_in_cache(node, info, states):
        # The cat's cached window gathered (read and written), each changed input written
        # into its slice (read and written on its own box).
        total = 2 * _per_position(node, info) * _area(box)
        for source in _varying_inputs(node, info):
            patch = _patch_box(states.get(source))
            if patch is not None:
                total += 2 * _per_position(source, info) * _area(patch)
        return total
    total = _per_position(node, info) * _area(box)
    for source in _varying_inputs(node, info):
        total += _per_position(source, info) * _area(box)
        if states.get(source) != states.get(node):
            total += _gathered(source, info, states, box)
    return total


def _local_traffic(
    node: Node,
    info: dict[Node, NodeInfo],
    states: dict[Node, tuple[Box, ...] | Literal["full"]],
    windows: tuple[Box, ...] | None,
) -> int:
    """A conv, pool or pad node on its box: the input windows gathered (unless they are
    the input's patch, `reads_patch_as_is`) and read, the box written; with `windows` None
    it runs on the whole input map (a copy with the patch in)."""
    source = node.args[0]
    box = _patch_box(states.get(node))
    if not isinstance(source, Node) or box is None:
        return 0
    written = _per_position(node, info) * _area(box)
    if windows is None:
        return 3 * _elements(source, info) + written
    read = _per_position(source, info) * _area(windows[0])
    if reads_patch_as_is(node, windows, states.get(source)):
        return read + written
    return read + written + _gathered(source, info, states, windows[0])


def peak_elements(graph: ModelGraph, group: GroupPlan) -> int:
    """The most elements per occluded image that one patch or input window of `group`
    holds (what bounds the memory of a call of many members)."""
    info = graph.info
    peak = 0
    for node, state in group.states.items():
        box = _patch_box(state)
        if box is None:
            continue
        peak = max(peak, _per_position(node, info) * _area(box))
        windows = group.windows.get(node)
        source = node.args[0] if node.args else None
        if windows and windows[0] and isinstance(source, Node):
            peak = max(peak, _per_position(source, info) * _area(windows[0][0]))
    return peak
