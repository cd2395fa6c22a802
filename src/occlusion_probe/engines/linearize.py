"""A model as a chain of standard layers, for the incremental engine.

An ``nn.Sequential`` is its chain (nested ones are flattened, and children of the user's own
classes are read as below). Any other ``nn.Module`` is
traced with ``torch.fx`` in eval mode; when its ``forward`` is one straight line from the
input to the output (each step uses only the previous step's result) made of submodule calls
and a few functional equivalents of standard layers (``F.relu``, ``torch.flatten(x, 1)``,
``x.view(x.size(0), -1)``, ``F.max_pool2d`` ...), each step becomes the equivalent module.
That covers the usual hand-written classifier (``x = self.pool(F.relu(self.conv1(x)))`` ...).
Anything else (branches, residual additions, parameters used directly, Python control flow
on tensors) gives the reason instead, and the dense engine runs the model as it is.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from occlusion_probe.model import evaluation_mode

__all__ = ["layer_chain"]

Layers = list[tuple[str, nn.Module]]
# Makes the layer equal to a functional call from its arguments by name, or says why not.
_Maker = Callable[[dict[str, Any]], nn.Module | str]


def layer_chain(model: object) -> Layers | str:
    """``[(name, module), ...]`` that computes `model` layer after layer, or why there is none.

    Modules made for functional calls (``F.relu`` -> ``nn.ReLU()``) are new and in eval mode;
    submodules are the model's own. The model's train/eval flags are restored after tracing.
    """
    if type(model) is nn.Sequential:
        return _flatten_sequential(model, "")
    if not isinstance(model, nn.Module):
        return f"model ({type(model).__name__}) is not an nn.Module"
    try:
        # Tracing runs the user's forward on proxies: any exception or warning it raises means
        # only that the forward is not a plain chain; the dense engine will still run it.
        with warnings.catch_warnings(), evaluation_mode(model):
            warnings.simplefilter("ignore")
            graph_module = torch.fx.symbolic_trace(model)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return (
            f"model ({type(model).__name__}) is not an nn.Sequential and torch.fx could not "
            f"trace its forward ({type(error).__name__}: {first_line})"
        )
    return _chain_of(graph_module, type(model).__name__)


def _flatten_sequential(model: nn.Sequential, prefix: str) -> Layers:
    """The chain of a Sequential: nested Sequentials flattened, and a child module of the
    user's own class (e.g. a conv-bn-relu block) replaced by its traced chain when it is one;
    otherwise kept whole, for the engine to name as the unsupported layer."""
    layers: Layers = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            layers.extend(_flatten_sequential(child, f"{path}."))
            continue
        if not type(child).__module__.startswith("torch."):
            traced = layer_chain(child)
            if not isinstance(traced, str):
                layers.extend((f"{path}.{inner}", layer) for inner, layer in traced)
                continue
        layers.append((path, child))
    return layers


def _chain_of(graph_module: torch.fx.GraphModule, model_name: str) -> Layers | str:
    graph = graph_module.graph
    graph.eliminate_dead_code()
    nodes = list(graph.nodes)
    placeholders = [node for node in nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        names = ", ".join(node.name for node in placeholders)
        return f"model ({model_name}).forward takes {len(placeholders)} inputs ({names}); one is needed"
    previous = placeholders[0]
    layers: Layers = []
    # x.view(-1, k) flattens per image only when k is an image's whole feature count; the
    # next Linear's in_features (which the engine checks against the map's size) must be k.
    fixed_views: list[tuple[int, int, str]] = []
    for node in nodes:
        if node.op == "placeholder" or _is_shape_helper(node, previous):
            continue
        where = f"model ({model_name}).forward, step {node.name}"
        if node.op == "output":
            if node.args != (previous,):
                return f"{where}: the output is not the last step's result"
            break
        if node.op == "get_attr":
            return (
                f"{where} reads {node.target} directly; only layers and functions of the "
                "previous step's result are supported"
            )
        if not node.args or node.args[0] is not previous:
            return (
                f"{where} does not take the previous step's result; only a straight chain of "
                "layers is supported"
            )
        helpers = [arg for arg in node.all_input_nodes if arg is not previous]
        if any(not _is_shape_helper(arg, previous) for arg in helpers):
            return f"{where} uses more than the previous step's result (a branch, residual or parameter)"
        if any(
            user is not node and not _is_shape_helper(user, previous) for user in previous.users
        ):
            return f"{where}: the result of step {previous.name} is also used elsewhere (a branch or residual)"
        made = _module_for(node, graph_module)
        if isinstance(made, str):
            return f"{where}: {made}"
        if isinstance(made, _FixedView):
            fixed_views.append((len(layers), made.features, where))
            made = nn.Flatten()
        name = str(node.target) if node.op == "call_module" else node.name
        if node.op == "call_module" and type(made) is nn.Sequential:
            layers.extend(_flatten_sequential(made, f"{name}."))
        else:
            layers.append((name, made))
        previous = node
    for position, features, where in fixed_views:
        linear = next(
            (layer for _, layer in layers[position + 1 :] if type(layer) is nn.Linear), None
        )
        if linear is None:
            return f"{where}: x.view(-1, {features}) is supported only before a Linear layer"
        if linear.in_features != features:
            return (
                f"{where}: x.view(-1, {features}) is followed by a Linear with "
                f"{linear.in_features} input features"
            )
    return layers


class _FixedView(nn.Module):
    """Stands for ``x.view(-1, features)`` until the chain is complete."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features


def _is_shape_helper(node: torch.fx.Node, source: torch.fx.Node) -> bool:
    """``x.size(0)``, ``x.shape`` or ``x.shape[0]`` of `source`, as in
    ``x.view(x.size(0), -1)``."""
    if node.op == "call_method" and node.target == "size":
        return node.args == (source, 0) or (node.args == (source,) and node.kwargs == {"dim": 0})
    if node.op == "call_function" and node.target is getattr:
        return node.args == (source, "shape")
    if node.op == "call_function" and node.target is operator.getitem:
        shape = node.args[0]
        return bool(
            isinstance(shape, torch.fx.Node)
            and node.args[1] == 0
            and shape.op == "call_function"
            and shape.target is getattr
            and shape.args == (source, "shape")
        )
    return False


def _module_for(node: torch.fx.Node, graph_module: torch.fx.GraphModule) -> nn.Module | str:
    if node.op == "call_module":
        return graph_module.get_submodule(str(node.target))
    if node.op == "call_method":
        made = _method_module(node)
    elif node.op == "call_function":
        maker = _FUNCTIONS.get(node.target)
        if maker is None:
            return f"{_target_name(node.target)} has no layer equivalent the engine knows"
        arguments = _bound_arguments(node, graph_module)
        if arguments is None:
            return "its arguments could not be matched to its signature"
        made = maker(arguments)
    else:
        return f"{node.op} {node.target!r} is not a layer"
    if isinstance(made, nn.Module):
        made.eval()
    return made


def _target_name(target: object) -> str:
    name = getattr(target, "__name__", repr(target))
    module = getattr(target, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _bound_arguments(
    node: torch.fx.Node, graph_module: torch.fx.GraphModule
) -> dict[str, Any] | None:
    """The call's arguments by parameter name (the input first), or None when unknown."""
    try:
        normalized = node.normalized_arguments(graph_module, normalize_to_only_use_kwargs=True)
    except RuntimeError:
        # Builtins such as torch.tanh also have scalar overloads, which makes the match
        # ambiguous; called on the tensor alone they need no further arguments.
        normalized = None
    if normalized is None:
        return {"input": node.args[0]} if len(node.args) == 1 and not node.kwargs else None
    return dict(normalized.kwargs)


def _method_module(node: torch.fx.Node) -> nn.Module | str:
    method, args, kwargs = str(node.target), node.args[1:], node.kwargs
    plain: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "contiguous": nn.Identity,
    }
    if method in plain and not args and not kwargs:
        return plain[method]()
    if method == "flatten":
        start = args[0] if args else kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
        if start == 1 and end == -1:
            return nn.Flatten()
        return f"x.flatten({start}, {end}) keeps or merges the batch dimension; only flatten(1) is supported"
    if method in ("view", "reshape"):
        source = node.args[0]
        shape = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
        if len(shape) == 2 and not kwargs and isinstance(source, torch.fx.Node):
            first, second = shape
            if second == -1 and isinstance(first, torch.fx.Node):
                if _is_shape_helper(first, source) and first.target is not getattr:
                    return nn.Flatten()
            if first == -1 and isinstance(second, int) and not isinstance(second, bool):
                return _FixedView(second)
        return (
            f"x.{method}{tuple(shape)!r} is supported only as x.{method}(x.size(0), -1) "
            f"or x.{method}(-1, features)"
        )
    if method in ("softmax", "log_softmax"):
        dim = args[0] if args else kwargs.get("dim")
        if dim in (1, -1) and len(args) <= 1:
            return nn.Softmax(dim=1) if method == "softmax" else nn.LogSoftmax(dim=1)
        return f"x.{method} over dim={dim!r}; only dim=1 is supported"
    return f"the tensor method .{method}() has no layer equivalent the engine knows"


def _needs(arguments: dict[str, Any], **expected: object) -> str | None:
    """Why the call's optional arguments are not the defaults the layer equivalent assumes."""
    for key, value in expected.items():
        if key in arguments and arguments[key] != value:
            return f"{key}={arguments[key]!r} is not supported (only {value!r})"
    return None


def _activation(module: Callable[..., nn.Module], *names: str) -> _Maker:
    """A maker for an activation whose keyword arguments (apart from the input and `inplace`)
    are passed to `module` under the same names."""

    def make(arguments: dict[str, Any]) -> nn.Module | str:
        return module(**{name: arguments[name] for name in names if name in arguments})

    return make


def _flatten(arguments: dict[str, Any]) -> nn.Module | str:
    start, end = arguments.get("start_dim", 0), arguments.get("end_dim", -1)
    if (start, end) != (1, -1):
        return f"torch.flatten(x, {start}, {end}) is not per image; only torch.flatten(x, 1) is supported"
    return nn.Flatten()


def _max_pool(arguments: dict[str, Any]) -> nn.Module | str:
    reason = _needs(arguments, return_indices=False)
    if reason is not None:
        return reason
    return nn.MaxPool2d(
        arguments["kernel_size"],
        stride=arguments.get("stride") or None,
        padding=arguments.get("padding", 0),
        dilation=arguments.get("dilation", 1),
        ceil_mode=arguments.get("ceil_mode", False),
    )


def _avg_pool(arguments: dict[str, Any]) -> nn.Module:
    return nn.AvgPool2d(
        arguments["kernel_size"],
        stride=arguments.get("stride") or None,
        padding=arguments.get("padding", 0),
        ceil_mode=arguments.get("ceil_mode", False),
        count_include_pad=arguments.get("count_include_pad", True),
        divisor_override=arguments.get("divisor_override"),
    )


def _adaptive(module: type[nn.Module]) -> _Maker:
    def make(arguments: dict[str, Any]) -> nn.Module | str:
        reason = _needs(arguments, return_indices=False)
        if reason is not None:
            return reason
        return module(arguments["output_size"])

    return make


def _dropout(arguments: dict[str, Any]) -> nn.Module | str:
    if arguments.get("training", True):
        # Traced in eval mode, F.dropout(x, p, training=self.training) records False; True
        # means dropout stays active in eval mode, which is random, not a layer to reuse.
        return "dropout with training=True stays random in eval mode"
    return nn.Identity()


def _softmax(module: type[nn.Softmax] | type[nn.LogSoftmax]) -> _Maker:
    def make(arguments: dict[str, Any]) -> nn.Module | str:
        reason = _needs(arguments, dtype=None)
        if reason is not None:
            return reason
        if arguments.get("dim") not in (1, -1):
            return f"dim={arguments.get('dim')!r}; only dim=1 is supported"
        return module(dim=1)

    return make


_FUNCTIONS: dict[object, _Maker] = {
    F.relu: _activation(nn.ReLU),
    torch.relu: _activation(nn.ReLU),
    F.relu6: _activation(nn.ReLU6),
    F.leaky_relu: _activation(nn.LeakyReLU, "negative_slope"),
    F.elu: _activation(nn.ELU, "alpha"),
    F.gelu: _activation(nn.GELU, "approximate"),
    F.silu: _activation(nn.SiLU),
    F.hardswish: _activation(nn.Hardswish),
    torch.sigmoid: _activation(nn.Sigmoid),
    F.sigmoid: _activation(nn.Sigmoid),
    torch.tanh: _activation(nn.Tanh),
    F.tanh: _activation(nn.Tanh),
    torch.flatten: _flatten,
    F.max_pool2d: _max_pool,
    F.avg_pool2d: _avg_pool,
    F.adaptive_avg_pool2d: _adaptive(nn.AdaptiveAvgPool2d),
    F.adaptive_max_pool2d: _adaptive(nn.AdaptiveMaxPool2d),
    F.dropout: _dropout,
    F.dropout2d: _dropout,
    F.softmax: _softmax(nn.Softmax),
    torch.softmax: _softmax(nn.Softmax),
    F.log_softmax: _softmax(nn.LogSoftmax),
    torch.log_softmax: _softmax(nn.LogSoftmax),
}
