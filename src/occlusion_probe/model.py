"""Running the user's model: the callable protocol, output checks, and eval/inference mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeAlias

import torch
from torch import Tensor, nn
from typing_extensions import Protocol, runtime_checkable

from .errors import InputTypeError, InputValueError, describe

__all__ = [
    "Model",
    "OutputSpec",
    "check_outputs",
    "checked_forward",
    "evaluation_mode",
    "model_device",
    "model_dtype",
    "transform_outputs",
]


@runtime_checkable
class Model(Protocol):
    """Any callable classifier: a batch (B, C, H, W) in, class outputs (B, K) out."""

    def __call__(self, images: Tensor, /) -> Tensor: ...


OutputSpec: TypeAlias = str | Callable[[Tensor], Tensor]


def model_device(model: object) -> torch.device | None:
    """The device of a module's first parameter or buffer, or None for other callables."""
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
        for buffer in model.buffers():
            return buffer.device
    return None


def model_dtype(model: object) -> torch.dtype:
    """The floating dtype of a module's first floating parameter or buffer (float32 if none)."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float32


@contextlib.contextmanager
def evaluation_mode(model: object) -> Iterator[None]:
    """Run `model` in eval mode under ``torch.inference_mode()``, then restore each
    submodule's own train/eval flag (a model may deliberately mix them)."""
    flags: list[tuple[nn.Module, bool]] = []
    if isinstance(model, nn.Module):
        flags = [(module, module.training) for module in model.modules()]
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in flags:
            module.training = training


def checked_forward(model: Model, single_channel: bool) -> Callable[[Tensor], Tensor]:
    """Wrap `model` so every call is checked to return a (B, K) tensor.

    single_channel : the caller gave images as (N, H, W); the model is then fed (B, H, W).
    """

    def forward(batch: Tensor) -> Tensor:
        given = batch[:, 0] if single_channel else batch
        return check_outputs(model(given), batch.shape[0])

    return forward


def check_outputs(outputs: object, batch_size: int) -> Tensor:
    """The model's raw `outputs` for `batch_size` images, checked to be a (B, K) float tensor."""
    if not isinstance(outputs, Tensor):
        raise InputTypeError(
            f"model: expected it to return a Tensor of shape (B, K), got {describe(outputs)}"
        )
    if outputs.dim() != 2 or outputs.shape[0] != batch_size:
        raise InputValueError(
            f"model: expected outputs of shape (B, K) with B = {batch_size}, "
            f"got shape {tuple(outputs.shape)}"
        )
    if not outputs.is_floating_point():
        raise InputTypeError(f"model: expected floating-point outputs, got dtype {outputs.dtype}")
    return outputs


def output_name(output: OutputSpec) -> str:
    """A readable name of the `output` argument, validating it."""
    if isinstance(output, str):
        if output not in ("softmax", "logits"):
            raise InputValueError(
                f'output: expected "softmax", "logits" or a callable, got {output!r}'
            )
        return output
    if callable(output):
        return str(getattr(output, "__name__", type(output).__name__))
    raise InputTypeError(
        f'output: expected "softmax", "logits" or a callable, got {describe(output)}'
    )


def transform_outputs(raw: Tensor, output: OutputSpec) -> Tensor:
    """Apply the `output` choice to raw model outputs of shape (..., K)."""
    if output == "logits":
        return raw
    if output == "softmax":
        return torch.softmax(raw, dim=-1)
    if not callable(output):
        raise InputTypeError(
            f'output: expected "softmax", "logits" or a callable, got {describe(output)}'
        )
    flat = raw.reshape(-1, raw.shape[-1])
    made = output(flat)
    if not isinstance(made, Tensor) or made.shape != flat.shape:
        raise InputValueError(
            f"output: the callable must map (B, K) to (B, K) = {tuple(flat.shape)}, got {describe(made)}"
        )
    return made.reshape(raw.shape)
