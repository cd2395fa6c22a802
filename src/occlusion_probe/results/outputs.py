"""Checks of the values a result is built from: outputs finite, labels class indices.

A result never holds what no sweep gives: NaN outputs would make every mean and ranking
NaN without a word, and a label >= K would select no image (or index past the outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputTypeError, InputValueError, describe

__all__ = ["check_outputs_and_labels"]


def check_outputs_and_labels(
    baseline: Tensor, occluded: Tensor, labels: Tensor | None, k: int
) -> None:
    """Raise unless the outputs are finite floats and the labels integer indices in [0, K)."""
    for name, value in (("baseline", baseline), ("occluded", occluded)):
        if not value.is_floating_point():
            raise InputTypeError(f"{name}: expected a float tensor, got {describe(value)}")
        if value.numel() and not bool(torch.isfinite(value).all()):
            bad = torch.nonzero(~torch.isfinite(value))[0].tolist()
            raise InputValueError(
                f"{name}: expected finite outputs, got NaN or inf (first at index {bad})"
            )
    if labels is None:
        return
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputTypeError(
            f"labels: expected an integer tensor of class indices, got {describe(labels)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise InputValueError(
            f"labels: expected class indices in [0, {k - 1}] (K = {k} outputs), got values "
            f"{int(labels.min())}..{int(labels.max())}"
        )
