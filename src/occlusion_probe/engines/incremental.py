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

import contextlib
import copy
import functools
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

from ..batching import BatchConfig, BatchPlan, as_channels_last, clock
from ..regions import mask_digest
from .boxes import Box, bounding_boxes
from .graph import ModelGraph, attribute, read_graph
from .plan import (
    FULL,
    GroupPlan,
    RegionPlan,
    cat_channels,
    cat_in_cache,
    constant_cut,
    dense_traffic,
    group_part,
    node_flops,
    op_name,
    peak_elements,
    plan_groups,
    plan_region,
    reads_patch_as_is,
)

__all__ = ["MIN_BOUND", "IncrementalEngine"]

#: `engine="auto"` runs the incremental engine only when its plan saves at least this factor
#: of the dense FLOPs and of the dense memory traffic: below it, the cache, the extra op
#: calls and what the estimates leave out cost about what the plan saves (measured with
#: benchmarks/test_architectures.py; docs/performance.md, "Measured choices in the code").
MIN_BOUND = 1.25

#: What one op call of a group costs beyond its arithmetic (the engine's window gathers,
#: patch writes and Python per node), in seconds: the call cost at which the grouping ran
#: fastest (benchmarks/test_architectures.py; docs/performance.md, "Measured choices").
CALL_SECONDS = 2e-4
#: The occluded images per call the engine aims at on the CPU with ``batch_size="auto"``:
#: more for plans that run at least COMPUTE_BOUND_INTENSITY conv FLOPs per tensor element
#: they move, since larger calls help convolutions and hurt memory-bound ops (measured with
#: benchmarks/test_architectures.py and test_heatmaps.py; docs/performance.md).
MEMORY_BOUND_ITEMS = 24
COMPUTE_BOUND_ITEMS = 64
COMPUTE_BOUND_INTENSITY = 200.0
#: The grouping's call cost before a run has measured the FLOP rate: 0.2 ms at 100 GFLOP/s.
DEFAULT_CALL_FLOPS = CALL_SECONDS * 1e11
#: The FLOP rate (FLOP/s) the groups are re-planned with; None: measured on the first run.
#: Tests set one so that no grouping depends on the machine's speed or load.
FLOP_RATE: float | None = None

Finish = Callable[[object], Tensor]


@dataclass(frozen=True, eq=False)
class _Full:
    """A node computed on whole maps: value has the occluded items as its batch."""

    value: object


@dataclass(frozen=True)
class Tail:
    """The whole-map part of a group's plan: `nodes` (in graph order) run on whole maps,
    reading the `frontier` nodes' values as whole maps."""

    nodes: tuple[Node, ...]
    frontier: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class _Patch:
    """A node whose values differ only inside one box per group member (equal shapes);
    value holds the items' values on the boxes, (member, image, fill) along the batch."""

    boxes: tuple[Box, ...]
    value: Tensor


_Value = _Full | _Patch


class IncrementalEngine:
    """The incremental engine, prepared for one model, image shape and set of regions.

    Use `prepare` to make one; it returns a reason (str) instead when the model cannot be
    read. ``flop_bound`` is dense FLOPs over the FLOPs the grouped plan runs (conv2d and
    linear ops counted, on boxes grown to each group's shapes), the most the plan can gain
    over running the whole model on every occluded image where convolutions dominate;
    ``traffic_bound`` is the same for the tensor elements read and written (the engine's
    window gathers and patch writes counted), where memory-bound ops dominate (DenseNet's
    concatenations, batch norms and ReLUs). ``bound`` is the smaller of the two.
    """

    def __init__(
        self,
        graph: ModelGraph,
        boxes: list[Box | None],
        plans: list[RegionPlan],
        dense_flops: int,
        dense_elements: int,
    ) -> None:
        self.graph = graph
        self.plans = plans
        self.dense_elements = dense_elements
        self.boxes = boxes
        self.empty_regions = [r for r, box in enumerate(boxes) if box is None]
        self.dense_flops = dense_flops
        # Regions with the same plan up to where their boxes lie run together: each op is
        # then one call per group, so launches grow with layers, not layers x regions. The
        # grouping weighs the FLOPs that growing boxes to common shapes adds against the
        # calls it saves: planned here with DEFAULT_CALL_FLOPS, re-planned on the first run
        # from the measured speed of the full forward and the images per call (_regroup).
        self._groupings: dict[int, list[GroupPlan]] = {}
        self.groups: list[GroupPlan] = []
        self._use_grouping(DEFAULT_CALL_FLOPS)
        # Whether this engine was read and planned for an earlier sweep (see prepare).
        self.reused = False
        # Cached maps padded for windows that cross their border, per cache block.
        self._padded_maps: dict[tuple[object, ...], Tensor] = {}
        # Members per call, timed on the first run (see _pieces).
        self._piece_plan: BatchPlan | None = None
        self._piece_unit = 1
        self._piece_group: GroupPlan | None = None
        # The maps' memory layout, decided on the first run (see _faster_layout).
        self.channels_last: bool | None = None
        self.layout_seconds: dict[bool, float] = {}
        self._in_place = _in_place_ops(graph)
        # The whole-map part of each plan's states (see tail_of).
        self._tails: dict[int, tuple[object, Tail]] = {}
        # One run at a time: a run fills the engine's caches and timings (threads share an
        # engine kept for a model, see prepare).
        self._run_lock = threading.Lock()
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

    def _use_grouping(self, call_flops: float) -> None:
        """Group the regions for op calls worth `call_flops` FLOPs per occluded image of a
        member (groupings are kept per power of two), and set the bounds of that plan."""
        key = round(math.log2(call_flops)) if call_flops > 0 else -1000
        # The cost the grouping is planned with (the note reports it).
        self.call_flops = 2.0**key if call_flops > 0 else 0.0
        groups = self._groupings.get(key)
        if groups is None:
            groups = plan_groups(self.graph, self.plans, self.boxes, self.call_flops)
            self._groupings[key] = groups
        if groups is self.groups:
            return
        self.groups = groups
        planned = sum(group.flops * len(group.members) for group in groups)
        count = sum(len(group.members) for group in groups)
        self.flop_bound = math.inf if planned == 0 else self.dense_flops * count / max(1, planned)
        moved = sum(group.traffic * len(group.members) for group in groups)
        self.traffic_bound = math.inf if moved == 0 else self.dense_elements * count / moved
        self.bound = min(self.flop_bound, self.traffic_bound)
        # FLOPs per element moved: convolution-bound plans gain from larger calls,
        # memory-bound ones (depthwise convs) lose as their working set leaves the caches.
        intensity = planned / max(1, moved)
        self.cpu_items_per_call = (
            COMPUTE_BOUND_ITEMS if intensity >= COMPUTE_BOUND_INTENSITY else MEMORY_BOUND_ITEMS
        )

    def _regroup(self, images: int, seconds: float, items_per_member: int) -> None:
        """Re-plan the groups from a measured full forward: `images` took `seconds`, and
        each member carries `items_per_member` occluded images per call. One op call of a
        group costs about CALL_SECONDS beyond its arithmetic; at the measured FLOP rate
        that is worth CALL_SECONDS * rate FLOPs, shared by the member's images."""
        if seconds <= 0 or images <= 0 or self.dense_flops <= 0:
            return
        rate = self.dense_flops * images / seconds if FLOP_RATE is None else FLOP_RATE
        self._use_grouping(CALL_SECONDS * rate / max(1, items_per_member))

    @classmethod
    def prepare(
        cls,
        model: nn.Module,
        image_shape: tuple[int, ...],
        masks: Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> IncrementalEngine | str:
        """Read `model` and plan every region of `masks` (R, H, W); a reason on failure.

        Reading a model with torch.export and planning its regions takes seconds (about 15 s
        of CPU for a DenseNet-121 of 1,279 ATen nodes on 2 cores), so the result is kept for
        the model's next sweep with the same input, regions, dtype and device, while none of
        its parameters or buffers was replaced or changed in place (their identity and
        version counters) and no plain attribute of a submodule changed. What this cannot
        see (a forward method replaced at run time) is caught by the check of the graph's
        unoccluded outputs against the model's own forward on every chunk.
        """
        key = _key(model, image_shape, masks, dtype, device)
        with _PREPARED_LOCK:
            kept = _kept(model, key)
            if kept is not None:
                return kept
            prepared = cls._prepare(model, image_shape, masks, dtype, device)
            with contextlib.suppress(TypeError):
                _PREPARED[model] = (key, prepared)
            return prepared

    @classmethod
    def kept(
        cls,
        model: nn.Module,
        image_shape: tuple[int, ...],
        masks: Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> IncrementalEngine | str | None:
        """The engine (or reason) `prepare` kept for exactly this model state, input and
        regions, marked as reused; None when there is none (nothing is read)."""
        return _kept(model, _key(model, image_shape, masks, dtype, device))

    @classmethod
    def _prepare(
        cls,
        model: nn.Module,
        image_shape: tuple[int, ...],
        masks: Tensor,
        dtype: torch.dtype,
        device: torch.device,
    ) -> IncrementalEngine | str:
        example = torch.zeros((2, *image_shape), dtype=dtype, device=device)
        graph = read_graph(_private_copy(model), example)
        if isinstance(graph, str):
            return graph
        if graph.info[graph.image].shape != tuple(image_shape):
            return (
                f"the exported model's input is {graph.info[graph.image].shape}, not {image_shape}"
            )
        boxes = bounding_boxes(masks)
        plans = [plan_region(graph, box) for box in boxes]
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
        return cls(graph, boxes, plans, dense, dense_traffic(graph))

    @property
    def note(self) -> str:
        """One sentence on what the plan does, for `engine_note`."""
        switch = ", ".join(self.switch_points) if self.switch_points else "the output"
        regions = sum(len(group.members) for group in self.groups)
        how = "kept from an earlier sweep of this model" if self.reused else "torch.export graph"
        return (
            f"incremental engine ({how}): changed boxes are recomputed up to "
            f"{switch}, then whole maps; FLOP bound {self.flop_bound:.2f}x and memory-traffic "
            f"bound {self.traffic_bound:.2f}x over dense; "
            f"{regions} regions in {len(self.groups)} group(s) (regions whose boxes have "
            "equal shapes, merged where a call costs more than the FLOPs a merge adds: "
            f"{self.call_flops:.2g} FLOPs per occluded image), each op called once per group "
            "and call"
        )

    def run(
        self,
        images: Tensor,
        fill_images: Tensor,
        masks: Tensor,
        items_per_call: int,
        finish: Finish,
        on_progress: Callable[[int], None] | None = None,
        *,
        channels_last: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Outputs of the model on the unoccluded and on every occluded image (one run at a
        time per engine; see `_run`)."""
        with self._run_lock:
            return self._run(
                images,
                fill_images,
                masks,
                items_per_call,
                finish,
                on_progress,
                channels_last=channels_last,
            )

    def _run(
        self,
        images: Tensor,
        fill_images: Tensor,
        masks: Tensor,
        items_per_call: int,
        finish: Finish,
        on_progress: Callable[[int], None] | None = None,
        *,
        channels_last: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Outputs of the model on the unoccluded and on every occluded image.

        images : Tensor, shape (n, C, H, W)
        fill_images : Tensor, shape (V, n or 1, C or 1, H or 1, W or 1)
        masks : Tensor, shape (R, H, W), bool, the regions `prepare` planned
        items_per_call : about how many occluded images are computed together
        finish : turns the graph's raw output into a (b, K) tensor (the sweep's output rule)
        channels_last : run the graph on channels-last maps (the cache and every window), as
            the model's forward would run on channels-last images; None: the faster of the
            two layouts, timed once per engine on the first images' full forward
        returns : clean (n, K) and occluded (n, R, V, K); entry (i, r, v) equals the model on
            ``torch.where(masks[r], fill_images[v, i], images[i])``, up to rounding
        """
        n, channels, height, width = images.shape
        v = fill_images.shape[0]
        fills = fill_images.expand(v, n, channels, height, width)
        block = max(1, min(n, items_per_call // max(1, v)))
        clean_parts: list[Tensor] = []
        occluded: Tensor | None = None
        with torch.inference_mode():
            if channels_last is None:
                channels_last = self._faster_layout(images[:block])
            for start in range(0, n, block):
                stop = min(n, start + block)
                m = stop - start
                # Only the first block is timed (clock waits for an accelerator's queue).
                began = clock(images.device) if start == 0 else 0.0
                cache = self._cache(_in_layout(images[start:stop].clone(), channels_last))
                if start == 0:
                    seconds = self.layout_seconds.get(channels_last, clock(images.device) - began)
                    self._regroup(m, seconds, m * v)
                self._padded_maps = {}
                clean = finish(self._output(cache, {}, _Items(1, 1)))
                clean_parts.append(clean)
                if occluded is None:
                    occluded = torch.empty(
                        (n, len(self.boxes), v, clean.shape[1]),
                        dtype=clean.dtype,
                        device=clean.device,
                    )
                for region in self.empty_regions:
                    occluded[start:stop, region] = clean[:, None]
                if on_progress is not None and self.empty_regions:
                    on_progress(m * v * len(self.empty_regions))
                # Pieces whose whole-map part (the tail) waits to run in one larger call.
                pending = _PendingTails(self, cache, m, v, finish)
                for whole_group in self.groups:
                    pieces = self._pieces(
                        whole_group, items_per_call, m * v, self._most_members(whole_group, images)
                    )
                    first = 0
                    for config in pieces.blocks(len(whole_group.members)):
                        began = clock(images.device)
                        group = group_part(whole_group, first, first + config.size)
                        members = group.members
                        items = _Items(len(members), v)
                        patch = _input_patch(
                            images[start:stop],
                            fills[:, start:stop],
                            masks,
                            members,
                            group.states[self.graph.image],
                        )
                        values = self._group(cache, group, patch, items)
                        for done, outputs in pending.add(group, values, items):
                            self._store(occluded, start, done, outputs, on_progress)
                        pieces.record(config, clock(images.device) - began)
                        first += config.size
                for done, outputs in pending.flush():
                    self._store(occluded, start, done, outputs, on_progress)
        if occluded is None:
            empty = torch.empty(
                (0, len(self.boxes), v, 0), dtype=images.dtype, device=images.device
            )
            return empty[:, 0, 0], empty
        return torch.cat(clean_parts), occluded

    def _faster_layout(self, images: Tensor) -> bool:
        """Whether the graph runs faster on channels-last maps: decided once per engine
        by timing the full forward of `images` (which the cache needs anyway) twice in
        each layout; False for empty images."""
        if self.channels_last is None:
            self.channels_last = False
            if images.dim() == 4 and images.shape[0] > 0:
                for _ in range(2):
                    for layout in (False, True):
                        began = clock(images.device)
                        self._cache(_in_layout(images.clone(), layout))
                        seconds = clock(images.device) - began
                        self.layout_seconds[layout] = min(
                            self.layout_seconds.get(layout, math.inf), seconds
                        )
                self.channels_last = self.layout_seconds[True] < self.layout_seconds[False]
        return self.channels_last

    def _most_members(self, group: GroupPlan, images: Tensor) -> int:
        """The most members of `group` per call on `images`' device (see _CALL_BYTES)."""
        if images.device.type != "cpu":
            return len(group.members)
        per_member = images.shape[0] * images.element_size() * peak_elements(self.graph, group)
        return max(1, _CALL_BYTES // max(1, per_member))

    def _pieces(
        self, group: GroupPlan, items_per_call: int, per_member: int, most: int
    ) -> BatchPlan:
        """How many members of `group` run per call (each member is `per_member` occluded
        images; at most `most`). On the first call, the largest group times member counts
        of about a half, one, two and four times `items_per_call` images (batching.py: a
        warm-up, a timed round and a second for the close ones; when the trial fits in two
        thirds of its members); every group then uses the fastest."""
        if self._piece_plan is None:
            largest = max(self.groups, key=lambda g: len(g.members))
            counts = sorted(
                {min(most, max(1, items_per_call * f // 2 // per_member)) for f in (1, 2, 4, 8)}
            )
            start = BatchConfig(min(most, max(1, items_per_call // per_member)))
            timed = len(counts) > 1 and 3 * sum(counts) <= 2 * len(largest.members)
            trial = [BatchConfig(c) for c in counts] if timed else []
            self._piece_plan = BatchPlan(
                start,
                trial,
                "timed"
                if timed
                else "planned from the engine's images per call (too few regions to time)",
                unit="regions",
            )
            self._piece_unit, self._piece_group = per_member, largest
        plan = self._piece_plan
        if group is self._piece_group and plan.trial and per_member == self._piece_unit:
            return plan
        return BatchPlan.fixed(
            min(most, max(1, plan.current.size * self._piece_unit // per_member))
        )

    @property
    def layout_note(self) -> str:
        """One clause for `engine_note`: the memory layout the maps were computed in."""
        if self.channels_last is None:
            return "maps in the images' layout"
        layout = "channels-last" if self.channels_last else "contiguous (NCHW)"
        pieces = "" if self._piece_plan is None else f"; {self._piece_plan.note}"
        if not self.layout_seconds:
            return f"maps {layout}{pieces}"
        timed = ", ".join(
            f"{'channels-last' if key else 'NCHW'} {1e3 * value:.1f} ms"
            for key, value in sorted(self.layout_seconds.items())
        )
        return f"maps {layout} (the faster full forward of the first images: {timed}){pieces}"

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

    def tail_of(self, group: GroupPlan) -> Tail:
        """The whole-map part of `group`'s plan: its nodes, and the other nodes they and the
        output read (the frontier)."""
        found = self._tails.get(id(group.states))
        if found is not None and found[0] is group.states:
            return found[1]
        nodes = tuple(
            node
            for node in self.graph.nodes
            if node.op == "call_function" and group.states.get(node) == FULL
        )
        inside = set(nodes)
        frontier: dict[Node, None] = {}
        output = next(n for n in self.graph.nodes if n.op == "output")
        for reader in (*nodes, output):
            if _is_size_query(reader):
                continue  # answered from shapes (`_size`): its input is never assembled
            for arg in reader.all_input_nodes:
                if arg not in inside:
                    frontier[arg] = None
        tail = Tail(nodes, tuple(frontier))
        self._tails[id(group.states)] = (group.states, tail)
        return tail

    def _tail(
        self, cache: dict[Node, object], tail: Tail, frontier: dict[Node, object], items: _Items
    ) -> object:
        """The graph's output for `items`, from the frontier's whole values (batch first)."""
        values: dict[Node, _Value] = {node: _Full(value) for node, value in frontier.items()}
        for node in tail.nodes:
            if _is_size_query(node):
                values[node] = _Full(self._size(cache, values, node, items))
                continue
            args, kwargs = _map(
                (node.args, node.kwargs), lambda a: self._whole(cache, values, a, items)
            )
            values[node] = _Full(node.target(*args, **kwargs))  # type: ignore[operator]
        return self._output(cache, values, items)

    def _size(
        self, cache: dict[Node, object], values: dict[Node, _Value], node: Node, items: _Items
    ) -> object:
        """A size query (``x.shape[d]``) on the items' whole values, answered from shapes:
        a whole map assembled only to be measured costs a copy of every item's map (the
        input images, for VGG's ``x.view(x.size(0), -1)``)."""
        source, dim = node.args[0], node.args[1] if len(node.args) > 1 else None
        found = values.get(source) if isinstance(source, Node) else None
        if isinstance(found, _Full) and isinstance(found.value, Tensor):
            shape = tuple(found.value.shape)
        else:
            base = cache[source] if isinstance(source, Node) else source
            if not isinstance(base, Tensor) or not isinstance(source, Node):
                raise RuntimeError(f"node {node.name}: the size of a value that is no tensor")
            shape = tuple(base.shape)
            if self.graph.info[source].varying:
                shape = items.shape_of(shape)
        if dim is None:
            return list(shape)
        if not isinstance(dim, int):
            raise RuntimeError(f"node {node.name}: a size query along {dim!r}")
        return shape[dim]

    @staticmethod
    def _store(
        occluded: Tensor,
        start: int,
        members: tuple[int, ...],
        outputs: Tensor,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        """Write the outputs (members * m * V, K) of `members` for images from `start`."""
        v = occluded.shape[2]
        m = outputs.shape[0] // (len(members) * v)
        shaped = outputs.reshape(len(members), m, v, -1).transpose(0, 1)
        occluded[start : start + m, list(members)] = shaped
        if on_progress is not None:
            on_progress(len(members) * m * v)

    def _output(
        self, cache: dict[Node, object], values: dict[Node, _Value], items: _Items
    ) -> object:
        """The graph's output for the items of `values` (the clean images when it is empty)."""
        output = next(n for n in self.graph.nodes if n.op == "output")
        leaves = _map(output.args[0], lambda a: self._whole(cache, values, a, items))
        spec = getattr(self.graph.module, "_out_spec", None)
        flat = list(leaves) if isinstance(leaves, (list, tuple)) else [leaves]
        if spec is not None:
            return torch.utils._pytree.tree_unflatten(flat, spec)
        return flat[0] if len(flat) == 1 else flat

    def _whole(
        self, cache: dict[Node, object], values: dict[Node, _Value], arg: object, items: _Items
    ) -> object:
        """`arg` (a node or a constant) as a whole value for the items."""
        if not isinstance(arg, Node):
            return arg
        found = values.get(arg)
        if found is None:
            value = cache[arg]
            if not self.graph.info[arg].varying or not values or not isinstance(value, Tensor):
                return value
            return items.expand(value)
        if isinstance(found, _Full):
            return found.value
        spatial = self._spatial(arg)
        whole = items.expand(cache[arg]).clone()  # type: ignore[arg-type]
        return _scatter(whole, spatial, found, items.groups)

    def _spatial(self, node: Node) -> tuple[int, int]:
        spatial = self.graph.info[node].spatial
        if spatial is None:
            raise RuntimeError(f"node {node.name} has no rows and columns to cut")
        return spatial

    def _group(
        self,
        cache: dict[Node, object],
        group: GroupPlan,
        start: _Patch,
        items: _Items,
    ) -> dict[Node, _Value]:
        """Every changed node's value for a group of regions."""
        values: dict[Node, _Value] = {self.graph.image: start}
        for node in self.graph.nodes:
            state = group.states.get(node)
            # Whole-map nodes (the tail) run later, for several calls at once (`_tail`).
            if state is None or state == FULL or node.op != "call_function":
                continue
            boxes = state
            name = op_name(node)
            if name in _LOCAL_OPS:
                values[node] = self._local(cache, values, node, group, items)
                continue
            if name == "getitem":
                parent = values[node.args[0]]  # type: ignore[index]
                if not isinstance(parent, _Patch):
                    raise RuntimeError("a batch norm's first output follows its input's state")
                values[node] = parent
                continue
            if cat_in_cache(node, self.graph.info, group.states):
                values[node] = _Patch(boxes, self._cat_in_cache(cache, values, node, boxes, items))
                continue
            args, kwargs = _map(
                (node.args, node.kwargs),
                functools.partial(
                    self._on_box,
                    cache,
                    values,
                    node=node,
                    boxes=boxes,
                    items=items,
                ),
            )
            target = node.target
            in_place = self._in_place.get(node)
            if in_place is not None and isinstance(args[0], Tensor):
                source = values.get(node.args[0])  # type: ignore[arg-type]
                # Its first input is a fresh window, or a patch no other node reads.
                if not isinstance(source, _Patch) or args[0] is not source.value:
                    target = in_place
                elif _sole_reader(node.args[0], node):  # type: ignore[arg-type]
                    target = in_place
            result = target(*args, **kwargs)  # type: ignore[operator]
            if isinstance(result, tuple):  # batch norm's (output, saved mean, saved var)
                result = result[0]
            values[node] = _Patch(boxes, result)
        return values

    def _on_box(
        self,
        cache: dict[Node, object],
        values: dict[Node, _Value],
        arg: object,
        *,
        node: Node,
        boxes: tuple[Box, ...],
        items: _Items,
    ) -> object:
        """`arg` of a pointwise or per-position `node` restricted to the node's boxes."""
        if not isinstance(arg, Node):
            return arg
        facts = self.graph.info[arg]
        value = cache.get(arg)
        if not facts.varying:
            # A constant broadcast against the node: cut its rows and columns where it has
            # them. plan_groups only groups regions whose boxes at such a node are equal.
            cut = constant_cut(self.graph, node, arg)
            if not cut or not isinstance(value, Tensor):
                return value
            box = boxes[0]
            index: list[slice] = [slice(None)] * value.dim()
            for dim, (lo, hi) in zip(cut, ((box[0], box[1]), (box[2], box[3])), strict=True):
                if dim is not None:
                    index[dim] = slice(lo, hi)
            return value[tuple(index)]
        found = values.get(arg)
        if isinstance(found, _Patch) and found.boxes == boxes:
            return found.value
        return self._window(cache, arg, found, boxes, items, 0.0)

    def _window(
        self,
        cache: dict[Node, object],
        node: Node,
        found: _Value | None,
        boxes: tuple[Box, ...],
        items: _Items,
        pad_value: float,
    ) -> Tensor:
        """The items' values of `node` on `boxes` (equal shapes, one per region of the
        group); a box may reach past the border, where it holds `pad_value`. Unchanged values
        are gathered from the cache, changed ones written in from the node's patch."""
        if isinstance(found, _Full):
            raise RuntimeError(f"node {node.name}: a whole map has no window")
        base = cache[node]
        if not isinstance(base, Tensor):
            raise RuntimeError(f"node {node.name} has no tensor value")
        spatial = self._spatial(node)
        source, inside = base, boxes
        if not _indexed(base.device):
            source, inside = self._padded(node, base, spatial, boxes, pad_value)
        window = _gather(source, spatial, inside, items, pad_value)
        if isinstance(found, _Patch):
            _write_patch(window, spatial, boxes, found)
        return window

    def _padded(
        self, node: Node, base: Tensor, spatial: tuple[int, int], boxes: tuple[Box, ...], pad: float
    ) -> tuple[Tensor, tuple[Box, ...]]:
        """`base` padded with `pad` so that every box lies inside it, and the boxes moved
        to match. Made once per node, padding and cache block (a window crossing the border
        is then one strided copy, instead of a fill of the window and a copy into it)."""
        height, width = base.shape[spatial[0]], base.shape[spatial[1]]
        top = max(0, -min(b[0] for b in boxes))
        bottom = max(0, max(b[1] for b in boxes) - height)
        left = max(0, -min(b[2] for b in boxes))
        right = max(0, max(b[3] for b in boxes) - width)
        if not (top or bottom or left or right):
            return base, boxes
        key = (node, top, bottom, left, right, pad)
        padded = self._padded_maps.get(key)
        if padded is None:
            moved = base.movedim(spatial, (-2, -1))
            padded = F.pad(moved, (left, right, top, bottom), value=pad).movedim((-2, -1), spatial)
            if _is_channels_last(base, spatial):
                padded = as_channels_last(padded)
            self._padded_maps[key] = padded
        moved_boxes = tuple((b[0] + top, b[1] + top, b[2] + left, b[3] + left) for b in boxes)
        return padded, moved_boxes

    def _local(
        self,
        cache: dict[Node, object],
        values: dict[Node, _Value],
        node: Node,
        group: GroupPlan,
        items: _Items,
    ) -> _Patch:
        """A conv, pool or pad node on the windows its changed output boxes read."""
        source = node.args[0]
        outputs = group.states[node]
        if not isinstance(source, Node) or outputs == FULL:
            raise RuntimeError(f"node {node.name} reads no patch")
        found = values.get(source)
        if not isinstance(found, _Patch):
            raise RuntimeError(f"node {node.name}: its input is not a patch")
        windows, pad_value, whole = group.windows[node]
        rest_args = [self._whole(cache, values, a, items) for a in node.args[1:]]
        kwargs = {k: self._whole(cache, values, a, items) for k, a in node.kwargs.items()}
        if whole:
            whole_input = self._whole(cache, values, source, items)
            return _Patch(outputs, node.target(whole_input, *rest_args, **kwargs))  # type: ignore[operator]
        if reads_patch_as_is(node, windows, found.boxes):
            window = found.value
        else:
            window = self._window(cache, source, found, windows, items, pad_value)
        return _Patch(outputs, _run_unpadded(op_name(node), window, rest_args, kwargs))

    def _cat_in_cache(
        self,
        cache: dict[Node, object],
        values: dict[Node, _Value],
        node: Node,
        boxes: tuple[Box, ...],
        items: _Items,
    ) -> Tensor:
        """A channel cat on `boxes` built in a window of its own cached value: each changed
        input is written into its slice, unchanged ones are there already (`cat_in_cache`)."""
        dim = cat_channels(node, self.graph.info)
        if dim is None:
            raise RuntimeError(f"node {node.name} is no channel cat")
        window = self._window(cache, node, None, boxes, items, 0.0)
        spatial = self._spatial(node)
        offset = 0
        for tensor in node.args[0]:  # type: ignore[union-attr]
            base = cache[tensor]  # type: ignore[index]
            if not isinstance(base, Tensor):
                raise RuntimeError(f"node {node.name} joins a value that is no tensor")
            size = base.shape[dim]
            found = values.get(tensor)  # type: ignore[arg-type]
            if isinstance(found, _Patch):
                part = window.narrow(dim, offset, size)  # a view: written in place
                if found.boxes == boxes:
                    part.copy_(found.value)
                else:
                    _write_patch(part, spatial, boxes, found)
            elif isinstance(found, _Full):
                raise RuntimeError(f"node {node.name}: a whole map has no window")
            offset += size
        return window


# The last prepared engine (or reason) per model, with the key it was prepared for.
_PREPARED: weakref.WeakKeyDictionary[
    nn.Module, tuple[tuple[object, ...], IncrementalEngine | str]
] = weakref.WeakKeyDictionary()
# Guards _PREPARED and serialises reading (torch.export is not thread-safe).
_PREPARED_LOCK = threading.RLock()


def _private_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` for torch.export to read: export swaps attributes of the module it
    traces while it runs, so another thread calling the caller's model meanwhile would run
    (and break) the half-traced module. Models that cannot be copied are read as they are
    (their reading still holds _PREPARED_LOCK; their concurrent calls are the caller's)."""
    try:
        return copy.deepcopy(model)
    except Exception:  # any object deepcopy refuses: read the model itself
        return model


def _kept(model: nn.Module, key: tuple[object, ...]) -> IncrementalEngine | str | None:
    """The engine (or reason) kept for `model` under `key`, marked as reused; else None."""
    with _PREPARED_LOCK:
        try:
            known = _PREPARED.get(model)
        except TypeError:  # not weakly referenceable: never kept
            return None
        if known is None or known[0] != key:
            return None
        engine = known[1]
        if isinstance(engine, IncrementalEngine):
            engine.reused = True
        return engine


def _key(
    model: nn.Module,
    image_shape: tuple[int, ...],
    masks: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[object, ...]:
    """What a kept engine must have been prepared for."""
    return (tuple(image_shape), dtype, str(device), mask_digest(masks), _state_signature(model))


def _state_signature(model: nn.Module) -> tuple[object, ...]:
    """What changes when a model's weights or settings change: every parameter's and
    buffer's identity, storage and version counter (bumped by in-place updates, such as an
    optimizer step), and every submodule's plain attributes (numbers, strings, flags)."""
    tensors = tuple(
        (name, id(t), t.data_ptr(), t._version)
        for name, t in (*model.named_parameters(), *model.named_buffers())
    )
    plain = (bool, int, float, str, type(None))
    attributes = tuple(
        (name, key, value)
        for name, sub in model.named_modules()
        for key, value in sorted(vars(sub).items())
        if isinstance(value, plain) and key != "training"
    )
    return (tensors, attributes)


_LOCAL_OPS = frozenset({"conv2d", "max_pool2d", "avg_pool2d", "pad", "constant_pad_nd"})

# Pointwise ops run in place on a patch that nothing else reads: no new map is allocated and
# first touched, which is much of what a ReLU or a residual add costs on a CPU.
_IN_PLACE = frozenset(
    {
        "relu",
        "hardtanh",
        "clamp_min",
        "clamp",
        "add",
        "mul",
        "gelu",
        "silu",
        "hardswish",
        "sigmoid",
        "tanh",
    }
)


def _in_place_ops(graph: ModelGraph) -> dict[Node, Any]:
    """Per pointwise node whose output has its first input's shape and dtype: the ATen
    in-place overload of its op (relu -> relu_), used on patches only (see _group)."""
    found: dict[Node, Any] = {}
    for node in graph.nodes:
        if node.op != "call_function" or op_name(node) not in _IN_PLACE or not node.args:
            continue
        first = node.args[0]
        if not isinstance(first, Node) or not graph.info[first].varying:
            continue
        own, source = node.meta.get("val"), first.meta.get("val")
        if not isinstance(own, Tensor) or not isinstance(source, Tensor):
            continue
        if own.shape != source.shape or own.dtype != source.dtype:
            continue
        packet = getattr(torch.ops.aten, op_name(node) + "_", None)
        overload = getattr(packet, getattr(node.target, "_overloadname", ""), None)
        if overload is not None:
            found[node] = overload
    return found


def _sole_reader(source: Node, node: Node) -> bool:
    """Whether `node` is the only reader of `source`'s value (through a batch norm's tuple
    element too, whose patch is the batch norm's)."""
    if list(source.users) != [node]:
        return False
    if op_name(source) == "getitem" and isinstance(source.args[0], Node):
        return len(source.args[0].users) == 1
    return True


#: The most bytes one patch or window of a call may hold on the CPU: glibc serves larger
#: allocations with fresh mmap'd pages every time (its dynamic mmap threshold stops at
#: 32 MiB), and first-touching them made such calls erratic (MobileNetV2 in
#: benchmarks/test_architectures.py; docs/performance.md, "Measured choices").
_CALL_BYTES = 32 * 2**20

#: The most bytes of frontier values (the whole maps a plan's tail reads) queued to run
#: the tails of several group calls as one call (_PendingTails).
TAIL_BYTES = 64 * 2**20

#: Gathers and scatters of windows at many offsets: on the CPU a strided copy per window is
#: several times faster than one advanced-indexing op; on accelerators one indexed op avoids
#: a kernel launch per window.
INDEXED_WINDOWS_ON_CPU = False


@dataclass(frozen=True)
class _Items:
    """How the occluded items of one call are laid out: (group member, image, fill)."""

    groups: int
    fills: int

    def shape_of(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape `expand` gives a value of shape `shape` (n, ...)."""
        return (self.groups * shape[0] * self.fills, *shape[1:])

    def expand(self, value: Tensor) -> Tensor:
        """A value of the n cached images, repeated for every (member, image, fill) item."""
        if self.groups == 1 and self.fills == 1:
            return value
        n = value.shape[0]
        grown = value.unsqueeze(0).unsqueeze(2)
        grown = grown.expand(self.groups, n, self.fills, *value.shape[1:])
        return grown.reshape(self.groups * n * self.fills, *value.shape[1:])


_SIZE_QUERIES = frozenset({"sym_size"})


def _is_size_query(node: Node) -> bool:
    """Whether `node` asks only for a size (``aten.sym_size``) of its input."""
    return node.op == "call_function" and op_name(node) in _SIZE_QUERIES


class _PendingTails:
    """Calls whose whole-map part (the tail) waits, so that it runs for many at once.

    After the changed boxes, a plan runs its last nodes (a classifier's fully connected
    layers) on whole values; per group call that is a few dozen occluded images, and a
    layer with large weights then streams them from memory for every call (VGG-16's
    classifier at half width: 76 MB per call). The tails of consecutive calls with the same
    tail nodes run as one call of up to `TAIL_BYTES` of frontier values (their items
    concatenated in call order), with the same results.
    """

    def __init__(
        self,
        engine: IncrementalEngine,
        cache: dict[Node, object],
        images: int,
        fills: int,
        finish: Finish,
    ) -> None:
        self.engine, self.cache, self.images, self.fills, self.finish = (
            engine,
            cache,
            images,
            fills,
            finish,
        )
        self.tail: Tail | None = None
        self.parts: list[tuple[tuple[int, ...], dict[Node, object]]] = []
        self.bytes = 0

    def add(
        self, group: GroupPlan, values: dict[Node, _Value], items: _Items
    ) -> list[tuple[tuple[int, ...], Tensor]]:
        """Queue one call's tail; returns (members, outputs) of the calls whose tails ran."""
        engine = self.engine
        tail = engine.tail_of(group)
        frontier = {node: engine._whole(self.cache, values, node, items) for node in tail.frontier}
        varying = [
            value
            for node, value in frontier.items()
            if engine.graph.info[node].varying and isinstance(value, Tensor)
        ]
        size = sum(value.numel() * value.element_size() for value in varying)
        done: list[tuple[tuple[int, ...], Tensor]] = []
        if self.parts and (tail != self.tail or self.bytes + size > TAIL_BYTES):
            done = self.flush()
        self.tail = tail
        self.parts.append((group.members, frontier))
        self.bytes += size
        if not self._combinable(frontier):
            done += self.flush()
        return done

    def _combinable(self, frontier: dict[Node, object]) -> bool:
        """Whether this call's frontier can join others: every value that differs between
        calls is a tensor with the items along its first dim."""
        info = self.engine.graph.info
        return bool(frontier) and all(
            isinstance(value, Tensor) or not info[node].varying for node, value in frontier.items()
        )

    def flush(self) -> list[tuple[tuple[int, ...], Tensor]]:
        """Run the queued tails as one call; (members, outputs (members * m * V, K)) each."""
        if not self.parts or self.tail is None:
            return []
        parts, self.parts, self.bytes = self.parts, [], 0
        info = self.engine.graph.info
        counts = [len(members) for members, _frontier in parts]
        frontier: dict[Node, object] = {}
        for node, first in parts[0][1].items():
            if info[node].varying and isinstance(first, Tensor) and len(parts) > 1:
                frontier[node] = torch.cat([values[node] for _members, values in parts])  # type: ignore[misc]
            else:
                frontier[node] = first
        items = _Items(sum(counts), self.fills)
        outputs = self.finish(self.engine._tail(self.cache, self.tail, frontier, items))
        per_member = self.images * self.fills
        done: list[tuple[tuple[int, ...], Tensor]] = []
        offset = 0
        for members, _frontier in parts:
            size = len(members) * per_member
            done.append((members, outputs[offset : offset + size]))
            offset += size
        return done


def _is_channels_last(value: Tensor, spatial: tuple[int, int]) -> bool:
    """Whether `value` is an (n, C, H, W) map with channels-last strides (channels
    innermost; for one channel, strides set so, as `as_channels_last` makes them)."""
    return (
        value.dim() == 4
        and spatial == (2, 3)
        and value.is_contiguous(memory_format=torch.channels_last)
        and value.stride(1) == 1
        and (value.shape[2] * value.shape[3] > 1 or value.shape[1] == 1)
    )


def _in_layout(images: Tensor, channels_last: bool) -> Tensor:
    """`images` (n, C, H, W) in channels-last memory when asked (a copy), else as given."""
    return as_channels_last(images) if channels_last else images


def _indexed(device: torch.device) -> bool:
    return device.type != "cpu" or INDEXED_WINDOWS_ON_CPU


def _offsets(boxes: tuple[Box, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(G, h) row and (G, w) column indices of equal-shaped boxes."""
    height, width = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    tops = torch.tensor([b[0] for b in boxes], device=device)
    lefts = torch.tensor([b[2] for b in boxes], device=device)
    rows = tops[:, None] + torch.arange(height, device=device)
    cols = lefts[:, None] + torch.arange(width, device=device)
    return rows, cols


def _gather(
    base: Tensor, spatial: tuple[int, int], boxes: tuple[Box, ...], items: _Items, pad: float
) -> Tensor:
    """Windows `boxes` of `base` (n, ...) for every item: (G * n * V, ...) with the box's
    rows and columns in place of the map's; positions past the border hold `pad` (the
    indexed path; the strided one takes boxes inside a map `_window` has padded)."""
    moved = base.movedim(spatial, (-2, -1))  # (n, rest..., H, W)
    n, rest = moved.shape[0], moved.shape[1:-2]
    height, width = moved.shape[-2], moved.shape[-1]
    box_h, box_w = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    groups = len(boxes)
    shape = (groups, n, items.fills, *rest, box_h, box_w)
    # Windows of a channels-last map are channels-last too, so that convs keep that layout.
    channels_last = _is_channels_last(base, spatial)
    if _indexed(base.device):
        rows, cols = _offsets(boxes, base.device)
        picked = moved[
            ..., rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]
        ]
        outside = bool(
            rows.min() < 0 or cols.min() < 0 or rows.max() >= height or cols.max() >= width
        )
        if outside:  # picked: (n, rest..., G, h, w)
            valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[
                :, None, :
            ]
            picked = picked.masked_fill(~valid, pad)
        picked = picked.movedim(-3, 0).unsqueeze(2)  # (G, n, 1, rest..., h, w)
        out = picked.expand(shape).contiguous()
    else:
        if channels_last:  # (G, n, V, h, w, C) memory seen as (G, n, V, C, h, w)
            out = torch.empty(
                (*shape[:3], box_h, box_w, *rest), dtype=base.dtype, device=base.device
            ).permute(0, 1, 2, 5, 3, 4)
        else:
            out = torch.empty(shape, dtype=base.dtype, device=base.device)
        # `_window` pads the map first on this path, so every box lies inside it.
        if not all(b[0] >= 0 and b[1] <= height and b[2] >= 0 and b[3] <= width for b in boxes):
            raise RuntimeError("strided window copies need boxes inside the (padded) map")
        # One strided copy per lattice block of members (sliding windows at one stride come
        # in rows of equal steps), not one per member.
        for block in lattice_blocks(boxes):
            _copy_lattice(out, moved, block, box_h, box_w)
    flat = out.reshape(groups * n * items.fills, *rest, box_h, box_w)
    if channels_last:
        # Already so on the CPU path (a view of the memory allocated above).
        return flat if _is_channels_last(flat, (2, 3)) else as_channels_last(flat)
    return flat.movedim((-2, -1), spatial)


@dataclass(frozen=True)
class LatticeBlock:
    """Members ``first ... first + rows * cols - 1`` of a group, in row-major order, whose
    boxes' top-left corners are ``(top + i * row_step, left + j * col_step)`` for member
    ``first + i * cols + j``."""

    first: int
    rows: int
    cols: int
    top: int
    left: int
    row_step: int
    col_step: int


def lattice_blocks(boxes: Sequence[Box]) -> list[LatticeBlock]:
    """`boxes` (in order, equal shapes) cut into consecutive lattice blocks by a greedy
    pass: runs of equal top and equally spaced lefts, then runs of such rows of equal
    length and lefts at equally spaced tops."""
    # Rows: [first, cols, top, left, col_step]
    rows: list[list[int]] = []
    for index, (top, _bottom, left, _right) in enumerate(boxes):
        if rows and rows[-1][2] == top:
            row = rows[-1]
            step = left - (row[3] + (row[1] - 1) * row[4])
            if step > 0 and (row[1] == 1 or step == row[4]):
                row[1] += 1
                row[4] = step
                continue
        rows.append([index, 1, top, left, 0])
    # Blocks: [first, rows, cols, top, left, row_step, col_step]
    blocks: list[list[int]] = []
    for first, cols, top, left, col_step in rows:
        if blocks:
            block = blocks[-1]
            step = top - (block[3] + (block[1] - 1) * block[5])
            if (
                cols == block[2]
                and left == block[4]
                and (cols == 1 or col_step == block[6])
                and step > 0
                and (block[1] == 1 or step == block[5])
            ):
                block[1] += 1
                block[5] = step
                continue
        blocks.append([first, 1, cols, top, left, 0, col_step])
    return [LatticeBlock(*block) for block in blocks]


def _copy_lattice(out: Tensor, moved: Tensor, block: LatticeBlock, box_h: int, box_w: int) -> None:
    """Copy the windows of one lattice block of `moved` (n, rest..., H, W) into its
    members' entries of `out` (G, n, V, rest..., h, w), broadcast over the fills, with one
    strided copy."""
    strides = moved.stride()
    row_stride, col_stride = strides[-2], strides[-1]
    source = moved.as_strided(
        (block.rows, block.cols, *moved.shape[:-2], box_h, box_w),
        (block.row_step * row_stride, block.col_step * col_stride, *strides),
        moved.storage_offset() + block.top * row_stride + block.left * col_stride,
    ).unsqueeze(3)  # (rows, cols, n, 1, rest..., h, w)
    count = block.rows * block.cols
    members = out[block.first : block.first + count]
    target = members.view(block.rows, block.cols, *members.shape[1:])
    target.copy_(source.expand(target.shape))


def _write_patch(
    window: Tensor, spatial: tuple[int, int], boxes: tuple[Box, ...], patch: _Patch
) -> None:
    """Write each member's changed values into its window (in place); windows and patch
    boxes lie at per-member offsets, equal for most members of a group."""
    groups = len(boxes)
    target = window.movedim(spatial, (-2, -1))
    target = target.reshape(groups, -1, *target.shape[1:]) if groups > 1 else target[None]
    source = patch.value.movedim(spatial, (-2, -1))
    source = source.reshape(groups, -1, *source.shape[1:])
    overlaps = [_overlap(box, patch_box) for box, patch_box in zip(boxes, patch.boxes, strict=True)]
    if all(o == overlaps[0] for o in overlaps) and overlaps[0] is not None:
        rows, cols, p_rows, p_cols = overlaps[0]
        target[..., rows, cols] = source[..., p_rows, p_cols]
        return
    if _indexed(window.device):
        _write_patch_indexed(target, source, boxes, patch.boxes)
        return
    # One strided copy per run of equally spaced members with the same overlap (members
    # at the same offset within a map's stride recur at a fixed step), not one per member.
    members_of: dict[tuple[int, int, int, int, int, int, int, int], list[int]] = {}
    for member, overlap in enumerate(overlaps):
        if overlap is not None:
            members_of.setdefault(_slice_key(overlap), []).append(member)
    for key, members in members_of.items():
        rows, cols = slice(key[0], key[1]), slice(key[2], key[3])
        p_rows, p_cols = slice(key[4], key[5]), slice(key[6], key[7])
        for picked in _progressions(members):
            target[picked, ..., rows, cols] = source[picked, ..., p_rows, p_cols]


def _slice_key(
    overlap: tuple[slice, slice, slice, slice],
) -> tuple[int, int, int, int, int, int, int, int]:
    rows, cols, p_rows, p_cols = overlap
    return (
        rows.start,
        rows.stop,
        cols.start,
        cols.stop,
        p_rows.start,
        p_rows.stop,
        p_cols.start,
        p_cols.stop,
    )


def _progressions(indices: list[int]) -> list[slice]:
    """Increasing `indices` as consecutive slices of constant step, greedily."""
    found: list[slice] = []
    start, step, count = indices[0], 1, 1
    for index in indices[1:]:
        last = start + (count - 1) * step
        if count == 1:
            step, count = index - start, 2
        elif index - last == step:
            count += 1
        else:
            found.append(slice(start, last + 1, step))
            start, step, count = index, 1, 1
    found.append(slice(start, start + (count - 1) * step + 1, step))
    return found


def _overlap(box: Box, patch_box: Box) -> tuple[slice, slice, slice, slice] | None:
    """Where `patch_box` meets `box`: (rows, cols) in the box, (rows, cols) in the patch."""
    top, bottom, left, right = box
    p_top, p_bottom, p_left, p_right = patch_box
    o_top, o_bottom = max(p_top, top), min(p_bottom, bottom)
    o_left, o_right = max(p_left, left), min(p_right, right)
    if o_top >= o_bottom or o_left >= o_right:
        return None
    return (
        slice(o_top - top, o_bottom - top),
        slice(o_left - left, o_right - left),
        slice(o_top - p_top, o_bottom - p_top),
        slice(o_left - p_left, o_right - p_left),
    )


def _write_patch_indexed(
    target: Tensor, source: Tensor, boxes: tuple[Box, ...], patch_boxes: tuple[Box, ...]
) -> None:
    """`_write_patch` for members whose overlaps differ, in a fixed number of ops: every
    window position reads the patch at its own map position (clamped), and keeps its value
    where that lies outside the member's patch box.

    target : (G, k, rest..., h, w) windows; source : (G, k, rest..., ph, pw) patches
    """
    device = target.device
    window_rows, window_cols = _offsets(boxes, device)  # (G, h), (G, w) map positions
    patch_rows = window_rows - torch.tensor([b[0] for b in patch_boxes], device=device)[:, None]
    patch_cols = window_cols - torch.tensor([b[2] for b in patch_boxes], device=device)[:, None]
    height, width = source.shape[-2], source.shape[-1]
    inside = ((patch_rows >= 0) & (patch_rows < height))[:, :, None] & (
        (patch_cols >= 0) & (patch_cols < width)
    )[:, None, :]  # (G, h, w)
    member = torch.arange(len(boxes), device=device)[:, None, None]
    read = source[
        member,
        ...,
        patch_rows.clamp(0, height - 1)[:, :, None],
        patch_cols.clamp(0, width - 1)[:, None, :],
    ]  # advanced indices split by the ellipsis: (G, h, w, k, rest...)
    read = read.movedim((1, 2), (-2, -1))  # (G, k, rest..., h, w)
    shape = (len(boxes),) + (1,) * (target.dim() - 3) + inside.shape[1:]
    target.copy_(torch.where(inside.reshape(shape), read, target))


def _scatter(whole: Tensor, spatial: tuple[int, int], patch: _Patch, groups: int) -> Tensor:
    """Write each group member's patch into its items' whole maps `whole` (G * k, ...)."""
    target = whole.movedim(spatial, (-2, -1))
    target = target.reshape(groups, -1, *target.shape[1:])  # a view: `whole` is contiguous
    values = patch.value.movedim(spatial, (-2, -1))
    values = values.reshape(groups, -1, *values.shape[1:])  # (G, k, rest..., h, w)
    if _indexed(whole.device):
        rows, cols = _offsets(patch.boxes, whole.device)
        member = torch.arange(groups, device=whole.device)[:, None, None]
        # Advanced indices split by slices put their broadcast dims (G, h, w) first.
        target[member, ..., rows[:, :, None], cols[:, None, :]] = values.movedim((-2, -1), (1, 2))
        return whole
    for index, (top, bottom, left, right) in enumerate(patch.boxes):
        target[index, ..., top:bottom, left:right] = values[index]
    return whole


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


def _input_patch(
    images: Tensor,
    fills: Tensor,
    masks: Tensor,
    members: tuple[int, ...],
    boxes: tuple[Box, ...] | str,
) -> _Patch:
    """(G * m * V, C, h, w): the occluded inputs inside each member's box, in (member, image,
    fill) order.

    images : (m, C, H, W); fills : (V, m, C, H, W); masks : (R, H, W)
    """
    if isinstance(boxes, str):
        raise RuntimeError("the images are a patch in every plan")
    if _indexed(images.device) and len(members) > 1:
        # One gather per operand for all members (a fixed number of kernel launches).
        rows, cols = _offsets(boxes, images.device)
        rows, cols = rows[:, :, None], cols[:, None, :]  # (G, h, 1), (G, 1, w)
        index = torch.tensor(members, device=images.device)[:, None, None]
        in_region = masks[index, rows, cols]  # (G, h, w)
        inside = images[..., rows, cols].movedim(-3, 0)  # (G, m, C, h, w)
        fill = fills[..., rows, cols].movedim(-3, 0).transpose(1, 2)  # (G, m, V, C, h, w)
        patch = torch.where(in_region[:, None, None, None], fill, inside[:, :, None])
        return _Patch(boxes, patch.reshape(-1, *patch.shape[3:]))
    parts = []
    for region, (top, bottom, left, right) in zip(members, boxes, strict=True):
        inside = images[:, None, :, top:bottom, left:right]
        fill = fills[:, :, :, top:bottom, left:right].transpose(0, 1)
        parts.append(torch.where(masks[region, top:bottom, left:right], fill, inside))
    patch = torch.stack(parts) if len(parts) > 1 else parts[0][None]
    return _Patch(boxes, patch.reshape(-1, *patch.shape[3:]))
