"""Incremental engine: exact occlusion outputs, recomputing only what an occlusion changes.

The idea of Krypton (Nakandala, Kumar, Papakonstantinou, SIGMOD 2019), on the model's whole
graph: occluding a region changes the input only inside its bounding box, a local op changes
only the outputs whose receptive field meets a changed box, and a pointwise op only the box
itself. The engine has three parts:

- graph.py reads the model with torch.export into a functional ATen graph;
- plan.py decides, per region, which box of every node changes (or that it is full);
- this module runs the plan: the unoccluded values of every node are computed once per block
  of images (the cache), and for each region the changed boxes are computed from windows of
  the cache with the changed values written in, batched over images x fills; from the first
  node that mixes all positions on, the graph runs on whole maps.

`IncrementalEngine.prepare` reads and plans once per sweep; `run` is called per chunk.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

from .boxes import Box, bounding_boxes
from .graph import ModelGraph, attribute, read_graph
from .plan import FULL, POINTWISE, RegionPlan, local_geometry, node_flops, op_name, plan_region

__all__ = ["MIN_FLOP_BOUND", "IncrementalEngine"]

#: `engine="auto"` runs the incremental engine only when its plan saves at least this factor
#: of the dense FLOPs: below it, the cache, the window copies and the extra kernel launches
#: cost about what the saved FLOPs would.
MIN_FLOP_BOUND = 1.5

Finish = Callable[[object], Tensor]


@dataclass(frozen=True, eq=False)
class _Full:
    """A node computed on whole maps: value has the occluded items as its batch."""

    value: object


@dataclass(frozen=True, eq=False)
class _Patch:
    """A node whose values differ only inside `box` (rows and columns of its map)."""

    box: Box
    value: Tensor


_Value = _Full | _Patch


class IncrementalEngine:
    """The incremental engine, prepared for one model, image shape and set of regions.

    Use `prepare` to make one; it returns a reason (str) instead when the model cannot be
    read. ``flop_bound`` is dense FLOPs over planned FLOPs (conv2d and linear ops counted),
    the most the plan can gain over running the whole model on every occluded image.
    """

    def __init__(self, graph: ModelGraph, plans: list[RegionPlan], dense_flops: int) -> None:
        self.graph = graph
        self.plans = plans
        self.dense_flops = dense_flops
        planned = sum(plan.flops for plan in plans)
        self.flop_bound = math.inf if planned == 0 else dense_flops * len(plans) / max(1, planned)
        self.switch_points = sorted(
            {
                op_name(node)
                for plan in plans
                for node, state in plan.states.items()
                if state == FULL
                and graph.info[node].shape is not None  # a tensor op, not a shape query
                and any(isinstance(plan.state(i), tuple) for i in node.all_input_nodes)
            }
        )

    @classmethod
    def prepare(
        cls,
        model: nn.Module,
        image_shape: tuple[int, int, int],
        masks: Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> IncrementalEngine | str:
        """Read `model` and plan every region of `masks` (R, H, W); a reason on failure."""
        example = torch.zeros((2, *image_shape), dtype=dtype, device=device)
        graph = read_graph(model, example)
        if isinstance(graph, str):
            return graph
        if graph.info[graph.image].shape != tuple(image_shape):
            return (
                f"the exported model's input is {graph.info[graph.image].shape}, not {image_shape}"
            )
        plans = [plan_region(graph, box) for box in bounding_boxes(masks)]
        dense = sum(node_flops(node, graph.info, FULL) for node in graph.nodes)
        if not any(plan.states for plan in plans):
            return "no region changes the input"
        first_patch = any(
            isinstance(state, tuple) and node is not graph.image
            for plan in plans
            for node, state in plan.states.items()
        )
        if not first_patch:
            first = next(
                n
                for n in graph.nodes
                if n.op == "call_function"
                and graph.info[n].varying
                and graph.info[n].shape is not None  # a tensor op, not a shape query
            )
            return (
                f"the model's first op on the images ({op_name(first)}) mixes all positions, so "
                "no part of the model can be computed on changed boxes alone"
            )
        return cls(graph, plans, dense)

    @property
    def note(self) -> str:
        """One sentence on what the plan does, for `engine_note`."""
        switch = ", ".join(self.switch_points) if self.switch_points else "the output"
        return (
            f"incremental engine (torch.export graph): changed boxes are recomputed up to "
            f"{switch}, then whole maps; FLOP bound {self.flop_bound:.2f}x over dense"
        )

    def run(
        self,
        images: Tensor,
        fill_images: Tensor,
        masks: Tensor,
        items_per_call: int,
        finish: Finish,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Outputs of the model on the unoccluded and on every occluded image.

        images : Tensor, shape (n, C, H, W)
        fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
        masks : Tensor, shape (R, H, W), bool, the regions `prepare` planned
        items_per_call : about how many occluded images are computed together
        finish : turns the graph's raw output into a (b, K) tensor (the sweep's output rule)
        returns : clean (n, K) and occluded (n, R, V, K); entry (i, r, v) equals the model on
            ``torch.where(masks[r], fill_images[v, i], images[i])``, up to rounding
        """
        n, channels, height, width = images.shape
        v = fill_images.shape[0]
        fills = fill_images.expand(v, n, channels, height, width)
        boxes = bounding_boxes(masks)
        block = max(1, items_per_call // max(1, v))
        clean_parts: list[Tensor] = []
        occluded: Tensor | None = None
        with torch.inference_mode():
            for start in range(0, n, block):
                stop = min(n, start + block)
                cache = self._cache(images[start:stop].clone())
                clean = finish(self._output(cache, {}, 1))
                clean_parts.append(clean)
                if occluded is None:
                    occluded = torch.empty(
                        (n, len(boxes), v, clean.shape[1]), dtype=clean.dtype, device=clean.device
                    )
                for region, (box, plan) in enumerate(zip(boxes, self.plans, strict=True)):
                    count = (stop - start) * v
                    if box is None:
                        occluded[start:stop, region] = clean[:, None]
                    else:
                        patch = _input_patch(
                            images[start:stop], fills[:, start:stop], masks[region], box
                        )
                        values = self._region(cache, plan, _Patch(box, patch), v)
                        outputs = finish(self._output(cache, values, v))
                        occluded[start:stop, region] = outputs.reshape(stop - start, v, -1)
                    if on_progress is not None:
                        on_progress(count)
        if occluded is None:
            empty = torch.empty((0, len(boxes), v, 0), dtype=images.dtype, device=images.device)
            return empty[:, 0, 0], empty
        return torch.cat(clean_parts), occluded

    # ------------------------------------------------------------------ execution

    def _cache(self, images: Tensor) -> dict[Node, object]:
        """Every node's value on the unoccluded `images` (the graph run once)."""
        values: dict[Node, object] = {}
        module = self.graph.module
        for node in self.graph.nodes:
            if node.op == "placeholder":
                values[node] = images
            elif node.op == "get_attr":
                values[node] = attribute(module, str(node.target))
            elif node.op == "call_function":
                args, kwargs = _map((node.args, node.kwargs), lambda a: _read(values, a))
                values[node] = node.target(*args, **kwargs)  # type: ignore[operator]
        return values

    def _output(self, cache: dict[Node, object], values: dict[Node, _Value], fills: int) -> object:
        """The graph's output for the items of `values` (the clean images when it is empty)."""
        output = next(n for n in self.graph.nodes if n.op == "output")
        leaves = _map(output.args[0], lambda a: self._whole(cache, values, a, fills))
        spec = getattr(self.graph.module, "_out_spec", None)
        flat = list(leaves) if isinstance(leaves, (list, tuple)) else [leaves]
        if spec is not None:
            return torch.utils._pytree.tree_unflatten(flat, spec)
        return flat[0] if len(flat) == 1 else flat

    def _whole(
        self, cache: dict[Node, object], values: dict[Node, _Value], arg: object, fills: int
    ) -> object:
        """`arg` (a node or a constant) as a whole value for the items."""
        if not isinstance(arg, Node):
            return arg
        found = values.get(arg)
        if found is None:
            value = cache[arg]
            if not self.graph.info[arg].varying or not values or not isinstance(value, Tensor):
                return value
            return value.repeat_interleave(fills, dim=0)
        if isinstance(found, _Full):
            return found.value
        return self._window(cache, arg, found, None, fills, 0.0)

    def _region(
        self, cache: dict[Node, object], plan: RegionPlan, start: _Patch, fills: int
    ) -> dict[Node, _Value]:
        """Every changed node's value for one region: patches, then whole maps."""
        values: dict[Node, _Value] = {self.graph.image: start}
        for node in self.graph.nodes:
            state = plan.state(node)
            if state is None or node.op != "call_function":
                continue
            if state == FULL:
                args, kwargs = _map(
                    (node.args, node.kwargs), lambda a: self._whole(cache, values, a, fills)
                )
                values[node] = _Full(node.target(*args, **kwargs))  # type: ignore[operator]
                continue
            name = op_name(node)
            if name in ("conv2d", "max_pool2d", "avg_pool2d", "pad", "constant_pad_nd"):
                values[node] = self._local(cache, values, node, fills)
                continue
            if name == "getitem":
                parent = values[node.args[0]]  # type: ignore[index]
                if not isinstance(parent, _Patch):
                    raise RuntimeError("a batch norm's first output follows its input's state")
                values[node] = _Patch(parent.box, parent.value)
                continue
            box = state
            args, kwargs = _map(
                (node.args, node.kwargs),
                functools.partial(self._on_box, cache, values, node=node, box=box, fills=fills),
            )
            result = node.target(*args, **kwargs)  # type: ignore[operator]
            if isinstance(result, tuple):  # batch norm's (output, saved mean, saved var)
                result = result[0]
            values[node] = _Patch(box, result)
        return values

    def _on_box(
        self,
        cache: dict[Node, object],
        values: dict[Node, _Value],
        arg: object,
        *,
        node: Node,
        box: Box,
        fills: int,
    ) -> object:
        """`arg` of a pointwise or per-position `node` restricted to the node's `box`."""
        if not isinstance(arg, Node):
            return arg
        facts = self.graph.info[arg]
        value = cache.get(arg)
        if not facts.varying:
            # A constant broadcast against the node: cut its rows and columns where it has them.
            spatial = self.graph.info[node].spatial
            broadcast = op_name(node) in POINTWISE
            if not isinstance(value, Tensor) or spatial is None or not broadcast:
                return value
            shift = value.dim() - (len(self.graph.info[node].shape or ()) + 1)
            index: list[slice] = [slice(None)] * value.dim()
            for dim, (lo, hi) in zip(spatial, ((box[0], box[1]), (box[2], box[3])), strict=True):
                own = dim + shift
                if own >= 0 and value.shape[own] > 1:
                    index[own] = slice(lo, hi)
            return value[tuple(index)]
        found = values.get(arg)
        if found is not None and isinstance(found, _Patch) and found.box == box:
            return found.value
        return self._window(cache, arg, found, box, fills, 0.0)

    def _window(
        self,
        cache: dict[Node, object],
        node: Node,
        found: _Value | None,
        box: Box | None,
        fills: int,
        pad_value: float,
    ) -> Tensor:
        """The items' values of `node` on `box` (None: the whole map); the box may reach past
        the border, where it holds `pad_value`. Unchanged values come from the cache."""
        spatial = self.graph.info[node].spatial
        base = cache[node]
        if not isinstance(base, Tensor) or spatial is None:
            raise RuntimeError(f"node {node.name} has no rows and columns to cut")
        rows_dim, cols_dim = spatial
        height, width = base.shape[rows_dim], base.shape[cols_dim]
        top, bottom, left, right = (0, height, 0, width) if box is None else box
        inner = (max(top, 0), min(bottom, height), max(left, 0), min(right, width))
        index: list[slice] = [slice(None)] * base.dim()
        index[rows_dim], index[cols_dim] = slice(inner[0], inner[1]), slice(inner[2], inner[3])
        window: Tensor
        if isinstance(found, _Full):
            if not isinstance(found.value, Tensor):
                raise RuntimeError(f"node {node.name} has no tensor value")
            window = found.value[tuple(index)]
        else:
            window = base[tuple(index)].repeat_interleave(fills, dim=0)
            if isinstance(found, _Patch):
                p_top, p_bottom, p_left, p_right = found.box
                o_top, o_bottom = max(p_top, inner[0]), min(p_bottom, inner[1])
                o_left, o_right = max(p_left, inner[2]), min(p_right, inner[3])
                if o_top < o_bottom and o_left < o_right:
                    target: list[slice] = [slice(None)] * base.dim()
                    source: list[slice] = [slice(None)] * base.dim()
                    target[rows_dim] = slice(o_top - inner[0], o_bottom - inner[0])
                    target[cols_dim] = slice(o_left - inner[2], o_right - inner[2])
                    source[rows_dim] = slice(o_top - p_top, o_bottom - p_top)
                    source[cols_dim] = slice(o_left - p_left, o_right - p_left)
                    window[tuple(target)] = found.value[tuple(source)]
        if inner != (top, bottom, left, right):
            if spatial != (window.dim() - 2, window.dim() - 1):
                raise RuntimeError(f"node {node.name}: padding needs rows and columns last")
            pads = (inner[2] - left, right - inner[3], inner[0] - top, bottom - inner[1])
            window = F.pad(window, pads, value=pad_value)
        return window

    def _local(
        self, cache: dict[Node, object], values: dict[Node, _Value], node: Node, fills: int
    ) -> _Patch:
        """A conv, pool or pad node on the window its changed output box reads."""
        info = self.graph.info
        source = node.args[0]
        if not isinstance(source, Node):
            raise RuntimeError(f"node {node.name} reads no tensor")
        found = values.get(source)
        if not isinstance(found, _Patch):
            raise RuntimeError(f"node {node.name}: its input is not a patch")
        geometry = local_geometry(node, info, found.box)
        if geometry is None:
            raise RuntimeError(f"node {node.name} is not a local op")
        rest_args = [self._whole(cache, values, a, fills) for a in node.args[1:]]
        kwargs = {k: self._whole(cache, values, a, fills) for k, a in node.kwargs.items()}
        if geometry.whole:
            whole = self._window(cache, source, found, None, fills, 0.0)
            return _Patch(geometry.output, node.target(whole, *rest_args, **kwargs))  # type: ignore[operator]
        window = self._window(cache, source, found, geometry.window, fills, geometry.pad_value)
        return _Patch(geometry.output, _run_unpadded(op_name(node), window, rest_args, kwargs))


def _map(arg: object, function: Callable[[object], object]) -> Any:
    """`arg` with every leaf (node or constant) of its tuples, lists and dicts mapped."""
    if isinstance(arg, tuple):
        return tuple(_map(a, function) for a in arg)
    if isinstance(arg, list):
        return [_map(a, function) for a in arg]
    if isinstance(arg, Mapping):
        return {k: _map(a, function) for k, a in arg.items()}
    return function(arg)


def _read(values: dict[Node, object], arg: object) -> object:
    return values[arg] if isinstance(arg, Node) else arg


def _run_unpadded(
    name: str, window: Tensor, args: list[object], kwargs: dict[str, object]
) -> Tensor:
    """Run a local op on an explicitly padded `window`, with its own padding set to 0."""

    def get(index: int, key: str, default: object) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if name == "conv2d":
        weight, bias = get(0, "weight", None), get(1, "bias", None)
        stride, dilation, groups = get(2, "stride", 1), get(4, "dilation", 1), get(5, "groups", 1)
        return F.conv2d(window, weight, bias, stride, 0, dilation, groups)
    if name == "max_pool2d":
        kernel, stride = get(0, "kernel_size", None), get(1, "stride", None)
        dilation = get(3, "dilation", 1)
        return F.max_pool2d(window, kernel, stride or kernel, 0, dilation, False)
    if name == "avg_pool2d":
        kernel, stride = get(0, "kernel_size", None), get(1, "stride", None)
        divisor = get(5, "divisor_override", None)
        return F.avg_pool2d(window, kernel, stride or kernel, 0, False, True, divisor)
    # A constant pad whose window lies inside its input: the changed box is the same values.
    return window


def _input_patch(images: Tensor, fills: Tensor, mask: Tensor, box: Box) -> Tensor:
    """(m * V, C, h, w): the occluded inputs inside `box`, in (image, fill) order.

    images : (m, C, H, W); fills : (V, m, C, H, W); mask : (H, W)
    """
    top, bottom, left, right = box
    inside = images[:, None, :, top:bottom, left:right]
    fill = fills[:, :, :, top:bottom, left:right].transpose(0, 1)
    patch = torch.where(mask[top:bottom, left:right], fill, inside)
    return patch.reshape(-1, *patch.shape[2:])
