"""The model boundary: what the library hands the user's model, and what it accepts back.

Every call of the user's model goes through one `CheckedForward`, from `sweep`, `keep_only`
and (as the `finish` of the raw graph outputs) the incremental engine, so the rules below
hold alike everywhere:

* the model gets a copy of the images cast to its floating dtype, never the caller's tensor
  (a model may normalise its input in place);
* what it returns is read by one rule (`unwrap_outputs`): a Tensor (B, K); else an object
  whose ``.logits`` is a Tensor (a dataclass-style model output); else a Mapping whose
  ``"logits"`` is a Tensor; else a tuple or list whose first element is a Tensor. A callable
  `output` instead receives exactly what the model returned;
* K is fixed by the first call; a later call with another K is refused, naming the chunk;
* softmax is computed, and outputs are stored, in float32 (float64 for float64 outputs).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from typing_extensions import Protocol, runtime_checkable

from .errors import (
    InputTypeError,
    InputValueError,
    OcclusionProbeWarning,
    check_one_argument_callable,
    describe,
)

__all__ = [
    "OUTPUT_NAMES",
    "CheckedForward",
    "Model",
    "OutputSpec",
    "as_model",
    "cast_images",
    "check_finite_outputs",
    "check_outputs",
    "evaluation_mode",
    "input_dtype",
    "model_device",
    "model_dtype",
    "output_name",
    "resolve_device",
    "unwrap_outputs",
]


@runtime_checkable
class Model(Protocol):
    """Any callable classifier: a batch (B, C, H, W) in, class outputs (B, K) out (or a
    model output holding them, see `unwrap_outputs`)."""

    def __call__(self, images: Tensor, /) -> Any: ...


OutputSpec: TypeAlias = str | Callable[[Any], Tensor]

#: The names `output` accepts besides a callable. "probabilities" records outputs that
#: already are probabilities (a model ending in softmax) as they are.
OUTPUT_NAMES = ("softmax", "logits", "probabilities")

# Rows that are non-negative and sum to 1 within this are taken for probabilities already.
_PROBABILITY_TOLERANCE = 1e-3


def model_device(model: object) -> torch.device | None:
    """The device of a module's first parameter or buffer, or None for other callables."""
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
        for buffer in model.buffers():
            return buffer.device
    return None


def input_dtype(model: object) -> torch.dtype | None:
    """The floating dtype most of a module's floating parameters are in (counted by elements;
    its floating buffers when it has no floating parameter); None for other callables and
    modules without floating state (their input keeps the images' dtype).

    Counting elements, not taking the first tensor, keeps a float16 scalar (a temperature)
    registered first from casting a float32 network's input to float16.

    Examples
    --------
    >>> net = nn.Linear(4, 2)
    >>> net.register_parameter("scale", nn.Parameter(torch.ones((), dtype=torch.float16)))
    >>> input_dtype(net)
    torch.float32
    """
    if not isinstance(model, nn.Module):
        return None
    for tensors in (list(model.parameters()), list(model.buffers())):
        counts: dict[torch.dtype, int] = {}
        for tensor in tensors:
            if tensor.is_floating_point():
                counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
        if counts:
            # Ties go to the dtype met first (dicts keep insertion order).
            return max(counts, key=lambda dtype: counts[dtype])
    return None


def model_dtype(model: object) -> torch.dtype:
    """The floating dtype of the model's input (`input_dtype`; float32 if none)."""
    return input_dtype(model) or torch.float32


def _same_device(own: torch.device, wanted: torch.device) -> bool:
    """Whether `wanted` names the device `own` (an index-less `wanted` means the current one)."""
    if own.type != wanted.type:
        return False
    return wanted.index is None or own.index is None or own.index == wanted.index


def resolve_device(
    device: torch.device | str | None, model: object, images_device: torch.device
) -> torch.device:
    """Where masks are built and the model runs.

    Parameters
    ----------
    device : torch.device, str or None
        The `device` argument; None means the model's device, or for a callable without
        parameters the images' device.
    model : object
        The model; a module's parameters must be on `device` when one is given.
    images_device : torch.device
        Where the (first) images are.

    Returns
    -------
    torch.device

    Raises
    ------
    InputValueError
        When `device` is no device name, names a backend this machine lacks (``"cuda"``
        without CUDA, ``"cuda:3"`` with one GPU), or is not where the model's parameters are
        (type and index compared).

    Examples
    --------
    >>> resolve_device(None, lambda x: x, torch.device("cpu"))
    device(type='cpu')
    """
    own = model_device(model)
    if device is None:
        return own if own is not None else images_device
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputValueError(
            f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}"
        ) from error
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise InputValueError(
                f"device: expected a device this machine has, got {str(wanted)!r}, but CUDA "
                "is not available (a CPU-only torch build or no GPU); use 'cpu' or leave "
                "device=None"
            )
        count = torch.cuda.device_count()
        if wanted.index is not None and wanted.index >= count:
            raise InputValueError(
                f"device: expected one of cuda:0..cuda:{count - 1}, got {str(wanted)!r}"
            )
        if wanted.index is None:
            wanted = torch.device("cuda", torch.cuda.current_device())
    if own is not None and not _same_device(own, wanted):
        raise InputValueError(
            f"device: the model's parameters are on {own}, but device={str(wanted)!r} was given; "
            "move the model (model.to(device)) or leave device=None"
        )
    return wanted


# Models in eval mode for the library, by id: the model, how many calls hold it, and the
# train/eval flags its first entrant found (restored by the last one to leave).
_EVAL_HOLDERS: dict[int, tuple[nn.Module, int, list[tuple[nn.Module, bool]]]] = {}
_EVAL_LOCK = threading.Lock()


@contextlib.contextmanager
def evaluation_mode(model: object) -> Iterator[None]:
    """Run `model` in eval mode under ``torch.inference_mode()``, then restore each
    submodule's own train/eval flag (a model may deliberately mix them).

    Reentrant and thread-safe: while several calls (threads, or nested calls) hold one
    model, it stays in eval mode; the first entrant records the flags and switches, the last
    one to leave restores them, once. Exported programs' modules (``torch.export``), which
    cannot switch mode, run in the mode they were exported in.
    """
    module_model = model if isinstance(model, nn.Module) else None
    switchable = module_model is not None and not _is_exported(module_model)
    if switchable and module_model is not None:
        model = module_model
        with _EVAL_LOCK:
            held = _EVAL_HOLDERS.get(id(model))
            if held is None or held[0] is not model:
                flags = [(module, module.training) for module in model.modules()]
                model.eval()
                _EVAL_HOLDERS[id(model)] = (model, 1, flags)
            else:
                _EVAL_HOLDERS[id(model)] = (model, held[1] + 1, held[2])
    try:
        with torch.inference_mode():
            yield
    finally:
        if switchable:
            with _EVAL_LOCK:
                owner, count, flags = _EVAL_HOLDERS[id(model)]
                if count > 1:
                    _EVAL_HOLDERS[id(model)] = (owner, count - 1, flags)
                else:
                    del _EVAL_HOLDERS[id(model)]
                    for module, training in flags:
                        module.training = training


def _is_exported(model: nn.Module) -> bool:
    """Whether `model` is ``torch.export.export(...).module()`` (its eval() and train()
    raise; it runs as exported)."""
    overridden = vars(model)
    return isinstance(model, torch.fx.GraphModule) and (
        "train" in overridden or "eval" in overridden
    )


def as_model(model: object) -> object:
    """The callable to run for a `model` argument: an ``ExportedProgram`` (which cannot be
    called itself) gives its ``.module()``; anything else is itself."""
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


def _state_versions(model: object) -> dict[str, object]:
    """What tells that a module's state changed: each parameter's version counter (bumped by
    every in-place change) and each buffer's version and a copy of its values (kernels such
    as batch norm's update running statistics without a version bump under inference mode).
    Empty for other callables; tensors without a version (inference tensors) give None."""
    if not isinstance(model, nn.Module):
        return {}
    state: dict[str, object] = {}
    for name, parameter in model.named_parameters():
        state[name] = _version(parameter)
    for name, buffer in model.named_buffers():
        state[name] = (_version(buffer), buffer.detach().clone())
    return state


def _version(tensor: Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors keep no version
        return None


def _same_state(before: object, after: object) -> bool:
    if isinstance(before, tuple) and isinstance(after, tuple):
        if before[0] != after[0]:
            return False
        try:
            return bool(torch.equal(before[1], after[1]))
        except (RuntimeError, NotImplementedError):  # layouts without equal (sparse)
            return True
    return before == after


def cast_images(images: Tensor, dtype: torch.dtype | None, name: str = "images") -> Tensor:
    """`images` in `dtype` (None: unchanged), refusing values the narrower dtype cannot hold.

    Parameters
    ----------
    images : Tensor, shape (n, C, H, W), floating
    dtype : torch.dtype or None
        The model's floating dtype.
    name : str
        The argument named in the error.

    Returns
    -------
    Tensor
        `images` itself when no cast is needed, else a cast copy.

    Raises
    ------
    InputValueError
        When a finite value overflows `dtype` (e.g. 1e5 for a float16 model).

    Examples
    --------
    >>> cast_images(torch.ones(1, 1, 2, 2), torch.float64).dtype
    torch.float64
    """
    if dtype is None or images.dtype == dtype:
        return images
    largest = torch.finfo(dtype).max
    if largest < torch.finfo(images.dtype).max and images.numel():
        peak = float(images.abs().max())
        if peak > largest:
            raise InputValueError(
                f"{name}: expected values the model's dtype {dtype} can hold (|x| <= "
                f"{largest:.4g}), got values up to {peak:.4g}"
            )
    return images.to(dtype)


def check_finite_outputs(outputs: Tensor, offset: int, what: str) -> None:
    """Raise when a row of `outputs` (n, ...), one per image (image `offset` first), holds NaN
    or inf; the message names `what` was computed and the first offending image indices."""
    finite = torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = (torch.nonzero(~finite).flatten()[:10] + offset).tolist()
        raise InputValueError(
            f"model: produced NaN or inf outputs for {what} of images {bad} (first offending "
            "image indices); check the model and the input range"
        )


def unwrap_outputs(raw: object) -> tuple[Tensor, str] | None:
    """The class-output tensor inside a model's raw output, by the one rule, and where it was.

    The rule, in this order: a Tensor is itself; an object whose ``.logits`` is a Tensor
    (a dataclass-style model output) gives ``.logits``; a Mapping whose ``"logits"`` is a
    Tensor gives that; a tuple or list whose first element is a Tensor gives element 0.

    Parameters
    ----------
    raw : object
        What the model returned.

    Returns
    -------
    (Tensor, str) or None
        The tensor and a phrase saying where it was found; None when the rule finds none.

    Examples
    --------
    >>> logits = torch.zeros(2, 3)
    >>> unwrap_outputs({"logits": logits})[1]
    'the "logits" of the dict it returned'
    >>> unwrap_outputs((logits, "aux"))[0] is logits
    True
    """
    if isinstance(raw, Tensor):
        return raw, "the tensor it returned"
    kind = type(raw).__name__
    logits = getattr(raw, "logits", None)
    if isinstance(logits, Tensor):
        return logits, f"the .logits of the {kind} it returned"
    if isinstance(raw, Mapping) and isinstance(raw.get("logits"), Tensor):
        return raw["logits"], f'the "logits" of the {kind} it returned'
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], Tensor):
        return raw[0], f"element 0 of the {kind} it returned"
    return None


def check_outputs(outputs: object, batch_size: int | None, where: str = "") -> Tensor:
    """`outputs` checked to be a floating-point (B, K) tensor with K >= 1.

    Parameters
    ----------
    outputs : object
        The class outputs (already unwrapped).
    batch_size : int or None
        The B it must have; None accepts any.
    where : str
        A phrase appended to errors (e.g. "element 0 of the tuple it returned").

    Returns
    -------
    Tensor, shape (B, K)

    Raises
    ------
    InputTypeError
        When `outputs` is no Tensor, or not floating point.
    InputValueError
        When its shape is not (B, K) with K >= 1.
    """
    suffix = f" ({where})" if where else ""
    if not isinstance(outputs, Tensor):
        raise InputTypeError(
            f"model: expected it to return a Tensor of shape (B, K), got {describe(outputs)}"
        )
    wanted_b = "B" if batch_size is None else f"B = {batch_size}"
    if outputs.dim() != 2 or (batch_size is not None and outputs.shape[0] != batch_size):
        raise InputValueError(
            f"model: expected outputs of shape (B, K) with {wanted_b}, "
            f"got shape {tuple(outputs.shape)}{suffix}"
        )
    if outputs.shape[1] == 0:
        raise InputValueError(
            f"model: expected at least one class output (K >= 1), got shape "
            f"{tuple(outputs.shape)}{suffix}"
        )
    if not outputs.is_floating_point():
        raise InputTypeError(
            f"model: expected floating-point outputs, got dtype {outputs.dtype}{suffix}"
        )
    return outputs


def output_name(output: OutputSpec) -> str:
    """A readable name of the `output` argument, validating it."""
    if isinstance(output, str):
        if output not in OUTPUT_NAMES:
            raise InputValueError(
                f'output: expected "softmax", "logits", "probabilities" or a callable, got {output!r}'
            )
        return output
    if callable(output):
        check_one_argument_callable("output", output, "what the model returned")
        return str(getattr(output, "__name__", type(output).__name__))
    raise InputTypeError(
        'output: expected "softmax", "logits", "probabilities" or a callable, '
        f"got {describe(output)}"
    )


def _describe_output(raw: object) -> str:
    if isinstance(raw, Mapping):
        return f"{type(raw).__name__} with keys {list(raw)[:10]}"
    return describe(raw)


def _storage_dtype(values: Tensor) -> torch.dtype:
    return torch.float64 if values.dtype == torch.float64 else torch.float32


def _check_probabilities(values: Tensor, where: str) -> None:
    """Refuse outputs recorded as probabilities that are none: a negative value, or a row
    not summing to 1 (within float rounding of the outputs' dtype)."""
    if values.numel() == 0:
        return
    wide = values.to(torch.float64)
    tolerance = 1e-2 if values.element_size() <= 2 else 1e-3
    low = float(wide.min())
    sums = wide.sum(dim=1)
    worst = float((sums - 1).abs().max())
    if low < -tolerance or worst > tolerance:
        raise InputValueError(
            f'output: "probabilities" records outputs that are probabilities (non-negative, '
            f"each row summing to 1), but the model gave values down to {low:.4g} and row "
            f"sums from {float(sums.min()):.4g} to {float(sums.max()):.4g} ({where}); pass "
            'output="softmax" for logits'
        )


def _looks_like_probabilities(values: Tensor) -> bool:
    if values.shape[1] < 2 or values.numel() == 0:
        return False
    sums = values.sum(dim=1)
    return bool(values.min() >= 0) and float((sums - 1).abs().max()) <= _PROBABILITY_TOLERANCE


class CheckedForward:
    """The model boundary: one per `sweep` or `keep_only` call.

    Calling it with a batch (b, C, H, W) runs the model on a copy cast to `dtype` and returns
    the recorded outputs (b, K) (after `output`, float32 or float64); `finish` does the same
    for an output the caller computed (the incremental engine's graph outputs).

    Parameters
    ----------
    model : Model
        The user's callable.
    output : OutputSpec
        ``"softmax"``, ``"logits"``, ``"probabilities"`` or a callable receiving the raw
        model output and returning the (B, K) floating tensor to record.
    single_channel : bool
        The caller gave images without their channel axis, (N, *spatial); the model is then
        fed (b, *spatial).
    dtype : torch.dtype or None
        The model's floating dtype (images are cast to it); None keeps the images' dtype.

    Attributes
    ----------
    num_classes : int or None
        K, fixed by the first call.
    where : str
        Where the current calls come from ("chunk 2 (images 512..767)"), named in errors;
        set by the caller.
    """

    def __init__(
        self,
        model: Model,
        output: OutputSpec,
        *,
        single_channel: bool,
        dtype: torch.dtype | None,
    ) -> None:
        self.output_label = output_name(output)
        self.model = model
        self.output = output
        self.single_channel = single_channel
        self.dtype = dtype
        self.num_classes: int | None = None
        self.where = "the first call"
        self._first_where = ""
        #: The images of `check_first` (as the model got them) and their recorded outputs.
        self.first_call: tuple[Tensor, Tensor] | None = None

    def __call__(self, batch: Tensor, *, scratch: bool = False) -> Tensor:
        """Recorded outputs (b, K) of the model on `batch` (b, C, *spatial).

        scratch : `batch` is a buffer the library built and rewrites before reusing it, so
            the model may get it without a copy.
        """
        given = cast_images(batch, self.dtype)
        if given is batch and not scratch:
            given = batch.clone()
        if self.single_channel:
            given = given[:, 0]
        return self.finish(self.model(given), int(batch.shape[0]))

    def check_first(self, images: Tensor | None, device: torch.device) -> None:
        """Call the model once on `images` (a few first images, n >= 1) before any heavy
        work (reading the graph, building occluded batches), so that an output the library
        cannot read is reported at once; fixes K. The images and outputs are kept in
        `first_call` (`known_outputs` reuses them). Nothing is done for None."""
        if images is None:
            return
        self.where = "the first call"
        given = cast_images(images.to(device), self.dtype)
        before = _state_versions(self.model)
        with evaluation_mode(self.model):
            exported = isinstance(self.model, nn.Module) and _is_exported(self.model)
            try:
                outputs = self(given)
                if exported:
                    # The sweep calls it with batches of every size: a program exported
                    # with a fixed batch fails on the first other one, so try one now.
                    other = given[:1] if given.shape[0] > 1 else given.expand(2, *given.shape[1:])
                    self(other)
            except (RuntimeError, AssertionError) as error:
                if exported:
                    raise InputValueError(
                        "model: the exported program fails on batches of other sizes than it "
                        f"was exported with ({type(error).__name__}: {str(error)[:200]}); the "
                        "sweep runs batches of many sizes: export it with a dynamic batch "
                        'dimension, e.g. dynamic_shapes=({0: torch.export.Dim("batch")},)'
                    ) from error
                if not self.single_channel or not isinstance(error, RuntimeError):
                    raise
                spatial = "x".join(str(size) for size in given.shape[2:])
                raise InputValueError(
                    f"images: given without a channel axis (N, {spatial}), so the model is "
                    f"called with (B, {spatial}), and it failed ({type(error).__name__}: "
                    f"{str(error)[:200]}); pass images.unsqueeze(1) for a model that takes "
                    f"(B, 1, {spatial})"
                ) from error
            again = self(given)
        changed = [name for name, state in _state_versions(self.model).items()
                   if name not in before or not _same_state(before[name], state)]  # fmt: skip
        if changed:
            raise InputValueError(
                f"model: its forward changed its own parameters or buffers {changed[:5]} (in "
                "eval mode, on the first two images); the outputs would depend on the order "
                "and batching of the sweep. Causes: a BatchNorm forced into train mode (e.g. "
                "by a pre-hook), a forward that updates its weights or statistics"
            )
        finite = bool(torch.isfinite(outputs).all()) and bool(torch.isfinite(again).all())
        if finite and not torch.equal(outputs, again):
            worst = float((outputs - again).abs().max())
            # GPU kernels may pick other algorithms between calls: rounding, not randomness.
            low = self.dtype is not None and torch.finfo(self.dtype).bits <= 16
            rtol, atol = (2e-2, 2e-3) if low else (1e-4, 1e-5)
            if not torch.allclose(outputs, again, rtol=rtol, atol=atol):
                raise InputValueError(
                    f"model: two calls on the same two images gave outputs differing by up to "
                    f"{worst:.3g} (in eval mode); a model that is random at evaluation (e.g. "
                    "F.dropout(..., training=True) or a Dropout forced into train mode) gives "
                    "occlusion effects that are noise"
                )
        self.first_call = (given, outputs)

    def known_outputs(self, images: Tensor) -> Tensor | None:
        """The recorded outputs (k, K) of `check_first`'s call when `images` (n, C, H, W)
        starts with its k images (bit for bit), else None: the unoccluded outputs of those
        images need no second call."""
        if self.first_call is None:
            return None
        given, outputs = self.first_call
        k = given.shape[0]
        if (
            images.shape[0] >= k
            and images.dtype == given.dtype
            and images.device == given.device
            and torch.equal(images[:k], given)
        ):
            return outputs
        return None

    def finish(self, raw: object, batch_size: int | None = None) -> Tensor:
        """The recorded outputs (B, K) for a raw model output (any structure the model returns).

        Raises
        ------
        InputTypeError, InputValueError
            When the output is not readable by the rule (and `output` is no callable), not a
            floating (B, K) tensor, or has another K than the first call.
        """
        if callable(self.output) and not isinstance(self.output, str):
            name = self.output_label
            try:
                made = self.output(raw)
            except TypeError as error:
                if self.num_classes is not None:
                    raise
                # Builtins show no signature to check beforehand (output=torch.softmax).
                raise InputTypeError(
                    f"output: calling the callable {name!r} with what the model returned "
                    f"failed ({error}); output= takes one argument, the model's output, and "
                    "gives the (B, K) tensor to record"
                ) from error
            if not isinstance(made, Tensor) or not made.is_floating_point():
                raise InputTypeError(
                    f"output: the callable {name!r} must return a floating-point Tensor (B, K), "
                    f"got {describe(made)}"
                )
            if (
                made.dim() != 2
                or made.shape[1] == 0
                or (batch_size is not None and made.shape[0] != batch_size)
            ):
                wanted = "B" if batch_size is None else f"B = {batch_size}"
                raise InputValueError(
                    f"output: the callable {name!r} must return shape (B, K) with {wanted} and "
                    f"K >= 1, got shape {tuple(made.shape)}"
                )
            # A copy: the callable may return (a view of) a buffer the model reuses.
            recorded = made.to(_storage_dtype(made), copy=True)
        else:
            found = unwrap_outputs(raw)
            if found is None:
                raise InputTypeError(
                    "model: expected it to return a Tensor of shape (B, K), an object with a "
                    '.logits Tensor, a Mapping with a "logits" Tensor, or a tuple or list whose '
                    f"first element is a Tensor, got {_describe_output(raw)}; for other outputs pass "
                    "output= a callable that takes what the model returns and gives the (B, K) "
                    "tensor to record"
                )
            values = check_outputs(found[0], batch_size, found[1])
            if self.output == "softmax" and values.shape[1] == 1:
                raise InputValueError(
                    f"output: softmax over the model's single output per image (shape "
                    f"{tuple(values.shape)}) is always 1.0, so every drop would be 0; pass "
                    'output="logits", or output=torch.sigmoid for a one-logit binary classifier'
                )
            if self.output == "probabilities":
                _check_probabilities(values, self.where)
            if self.num_classes is None and self.output == "softmax":
                self._warn_if_probabilities(values)
            # Softmax makes a new tensor; other outputs are copied, since a model may return
            # the same buffer on every call (CUDA-graph replays do).
            recorded = (
                torch.softmax(values.to(_storage_dtype(values)), dim=1)
                if self.output == "softmax"
                else values.to(_storage_dtype(values), copy=True)
            )
        k = int(recorded.shape[1])
        if self.num_classes is None:
            self.num_classes, self._first_where = k, self.where
        elif k != self.num_classes:
            raise InputValueError(
                f"model: expected {self.num_classes} class outputs per image (as on "
                f"{self._first_where}), got {k} for {self.where}; the number of classes must "
                "not change between calls"
            )
        return recorded

    @staticmethod
    def _warn_if_probabilities(values: Tensor) -> None:
        if _looks_like_probabilities(values):
            warnings.warn(
                "model: its outputs already look like probabilities (non-negative, each row "
                'sums to 1), and output="softmax" would apply softmax a second time; pass '
                'output="probabilities" to record them as they are (or output="logits")',
                OcclusionProbeWarning,
                stacklevel=4,
            )
