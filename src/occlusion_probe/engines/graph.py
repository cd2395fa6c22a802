"""Reading a model for the incremental engine: torch.export into an ATen graph, with layouts.

`read_graph` exports the model (``torch.export.export`` with a dynamic batch dimension, then
functionalised with ``run_decompositions({})`` so that in-place ops become plain ones) and
annotates every node with what the box planner needs: whether it depends on the images,
its static shape, and which tensor dimensions are its spatial axes (one per axis of the
images: dims 2.. of an (N, C, *spatial) map, dims 1 and 2 of a 2D map after a permute to
channels last, as in ConvNeXt blocks). Images of 1, 2 or 3 spatial axes are read alike. Export
reads the models people use (control flow on shapes, zoo wrappers, residual blocks) where
torch.fx symbolic tracing fails.

What export cannot see is refused here with a reason, never run silently differently:
forward hooks and pre-hooks (a hook runs in ``Module.__call__``, which the engine does not
call per module), and models export fails on (data-dependent control flow).
"""

from __future__ import annotations

import operator
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from .plan import layout_rule

__all__ = ["EXPORT_LOCK", "ModelGraph", "NodeInfo", "hook_reason", "read_graph"]


@dataclass(frozen=True)
class NodeInfo:
    """Static facts about one graph node.

    varying : whether its value depends on the images (else it is a constant)
    shape : its shape without the batch dimension, for tensors; None otherwise
    spatial : the tensor dims of its spatial axes, in the images' axis order, counted with
        the batch dim at 0 ((2, 3) for an NCHW map, (2,) for (N, C, L)); None when the
        value has no spatial axes the engine can follow
    """

    varying: bool
    shape: tuple[int, ...] | None
    spatial: tuple[int, ...] | None


@dataclass(frozen=True, eq=False)
class ModelGraph:
    """An exported model: its functional ATen graph and per-node facts.

    module : the GraphModule (parameters and buffers as attributes)
    nodes : the graph's nodes in topological order, placeholders and output included
    info : NodeInfo per node
    image : the placeholder of the images
    """

    module: GraphModule
    nodes: tuple[Node, ...]
    info: dict[Node, NodeInfo]
    image: Node

    def users(self, node: Node) -> Iterator[Node]:
        """The nodes that read `node`."""
        return iter(node.users)


_VIEWS = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)


def hook_reason(model: nn.Module) -> str | None:
    """Why the incremental engine cannot honour the model's hooks, or None when it has none."""
    from torch.nn.modules import module as module_state

    global_hooks = (
        module_state._global_forward_hooks,
        module_state._global_forward_pre_hooks,
    )
    if any(len(hooks) for hooks in global_hooks):
        return "a global forward hook or pre-hook is registered (torch.nn.modules.module)"
    for name, sub in model.named_modules():
        if sub._forward_hooks or sub._forward_pre_hooks:
            where = f"submodule {name!r}" if name else "the model itself"
            return (
                f"{where} ({type(sub).__name__}) has a forward hook or pre-hook; the engine does "
                "not call each module, so it would skip what the hook does"
            )
    return None


def _value_shape(node: Node) -> tuple[int, ...] | None:
    value = node.meta.get("val")
    if not isinstance(value, Tensor):
        return None
    dims: list[int] = []
    for size in value.shape[1:]:
        if not isinstance(size, int):
            return None
        dims.append(size)
    return tuple(dims)


def _spatial_of(node: Node, info: dict[Node, NodeInfo], image: Node) -> tuple[int, ...] | None:
    """The spatial dims of `node`'s value, followed from its inputs through the ops that keep
    them (see plan.py for what each op does to a changed box)."""
    if node is image:
        return info[image].spatial
    return layout_rule(node, info)


#: Held while torch.export reads a model (see read_graph).
EXPORT_LOCK = threading.RLock()


def read_graph(model: nn.Module, example: Tensor) -> ModelGraph | str:
    """Export `model` on `example` (n >= 2, C, *spatial) with a dynamic batch; a reason on
    failure. The spatial axes are dims 2.. of `example` (1, 2 or 3 of them)."""
    reason = hook_reason(model)
    if reason is not None:
        return reason
    batch = torch.export.Dim("batch")
    try:
        # torch.export is not thread-safe (it patches global state while tracing): one export
        # at a time in this process.
        with EXPORT_LOCK, warnings.catch_warnings():
            # Export's internals warn about deprecated pytree and tracing APIs; not the user's.
            warnings.simplefilter("ignore")
            exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            exported = exported.run_decompositions({})
            module = exported.module()
    except Exception as error:  # export raises many types; any of them means "cannot read"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"torch.export could not read the model ({type(error).__name__}: {first[:200]})"
    if not isinstance(module, GraphModule):
        return f"torch.export returned {type(module).__name__}, not a GraphModule"
    for node in module.graph.nodes:
        # The functional graph never writes through a view, so reshape (a view where the
        # strides allow, else a copy) gives the same values; a view fails on the
        # channels-last maps the engine may run on, where the model's own forward (e.g.
        # nn.Flatten, which reshapes) works.
        if node.op == "call_function" and node.target in _VIEWS:
            node.target = torch.ops.aten.reshape.default
    nodes = tuple(module.graph.nodes)
    images = [node for node in nodes if node.op == "placeholder"]
    if len(images) != 1:
        return f"the exported model takes {len(images)} inputs; exactly one (the images) is needed"
    image = images[0]
    info: dict[Node, NodeInfo] = {}
    for node in nodes:
        if node.op == "placeholder":
            info[node] = NodeInfo(True, _value_shape(node), tuple(range(2, example.dim())))
            continue
        inputs = node.all_input_nodes
        varying = any(info[i].varying for i in inputs if i in info)
        partial = NodeInfo(varying, _value_shape(node), None)
        info[node] = partial
        if varying and node.op == "call_function":
            info[node] = NodeInfo(varying, partial.shape, _spatial_of(node, info, image))
    return ModelGraph(module, nodes, info, image)


def attribute(module: GraphModule, target: str) -> object:
    """The attribute a get_attr node names (a parameter, buffer or constant)."""
    return operator.attrgetter(target)(module)
