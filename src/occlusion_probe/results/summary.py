"""Short texts for the reprs of results: a few names, then a count, never every value.

A result of 1,000 classes or 2,809 windows prints in one line or a few, not as every tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["class_summary", "names_summary", "tensor_summary"]

#: Names shown at most; longer lists show their first and last few.
SHOWN = 6


def names_summary(names: Sequence[object], shown: int = SHOWN) -> str:
    """``"a, b, c"``, or ``"a, b, c, ..., y, z"`` for more than `shown` names."""
    texts = [str(name) for name in names]
    if len(texts) <= shown:
        return ", ".join(texts)
    head = texts[: shown - shown // 2]
    tail = texts[len(texts) - shown // 2 :]
    return ", ".join([*head, "...", *tail])


def class_summary(num_classes: int, class_names: Sequence[str] | None) -> str:
    """``"K=7 classes (An, Di, ..., Ne)"``, or ``"K=7 classes"`` without names."""
    if class_names is None:
        return f"K={num_classes} classes"
    return f"K={num_classes} classes ({names_summary(class_names)})"


def tensor_summary(name: str, tensor: Tensor | None) -> str:
    """``"occluded (4, 16, 6, 7) float32"``: a tensor's shape and dtype, not its values."""
    if tensor is None:
        return f"{name} None"
    dtype = str(tensor.dtype).replace("torch.", "")
    return f"{name} {tuple(tensor.shape)} {dtype}"
