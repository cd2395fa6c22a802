"""Joining `SweepResult`s of one sweep over consecutive image subsets (along N).

Parts join only when they come from one sweep: the same regions (ids and masks), fills,
classes, image shape, output and fidelity, all with or all without labels. A difference is
named, never averaged over: softmax probabilities beside logits, or region 3 of one grid
beside region 3 of another, would give a result that reads well and means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from ..errors import InputTypeError, InputValueError, describe
from ..fidelity import Fidelity

if TYPE_CHECKING:
    from .sweep_result import SweepResult

__all__ = ["concatenate_sweeps"]

Result = TypeVar("Result", bound="SweepResult")


def _same_fidelity(a: Fidelity | None, b: Fidelity | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a.as_array(), b.as_array(), equal_nan=True))


def _differences(first: SweepResult, part: SweepResult) -> list[str]:
    """What part differs in from the first part, in words."""
    found = []
    if part.regions.ids != first.regions.ids:
        found.append("region ids")
    elif not torch.equal(part.regions.masks.cpu(), first.regions.masks.cpu()):
        found.append("region masks (equal ids, other regions)")
    if part.fill_labels != first.fill_labels:
        found.append(f"fills ({part.fill_labels} vs {first.fill_labels})")
    if part.num_classes != first.num_classes or part.class_names != first.class_names:
        found.append("classes")
    if part.output != first.output:
        found.append(f"output ({part.output!r} vs {first.output!r})")
    if part.image_shape != first.image_shape:
        found.append(f"image shape ({part.image_shape} vs {first.image_shape})")
    if (part.labels is None) != (first.labels is None):
        found.append("labels (given to one, not to the other)")
    if part.baseline.dtype != first.baseline.dtype:
        found.append(f"dtype ({part.baseline.dtype} vs {first.baseline.dtype})")
    if not _same_fidelity(part.fidelity, first.fidelity):
        found.append("fidelity (approximate with different thresholds, or approximate and exact)")
    return found


def concatenate_sweeps(cls: type[Result], parts: Sequence[SweepResult]) -> Result:
    """The parts joined along N, in the given order (see `SweepResult.concatenate`)."""
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence):
        raise InputTypeError(f"parts: expected a sequence of SweepResult, got {describe(parts)}")
    if not parts:
        raise InputValueError("parts: expected at least one SweepResult, got none")
    wrong = [i for i, part in enumerate(parts) if not isinstance(part, cls)]
    if wrong:
        raise InputTypeError(
            f"parts: expected SweepResults only, got {describe(parts[wrong[0]])} at {wrong[0]}"
        )
    first = parts[0]
    for position, part in enumerate(parts[1:], start=1):
        differences = _differences(first, part)
        if differences:
            raise InputValueError(
                f"parts: part {position} does not come from the same sweep as part 0: its "
                f"{'; '.join(differences)} differ"
            )
    labels = None
    if first.labels is not None:
        labels = torch.cat([p.labels for p in parts if p.labels is not None])
    computed = None
    if any(p.computed is not None for p in parts):
        computed = torch.cat(
            [
                p.computed
                if p.computed is not None
                else torch.ones(p.num_images, len(p.regions), dtype=torch.bool)
                for p in parts
            ]
        )
    return cls(
        baseline=torch.cat([p.baseline for p in parts]),
        occluded=torch.cat([p.occluded for p in parts]),
        labels=labels,
        regions=first.regions,
        fill_labels=first.fill_labels,
        class_names=first.class_names,
        image_shape=first.image_shape,
        output=first.output,
        engine=first.engine,
        engine_note=first.engine_note,
        computed=computed,
        fidelity=first.fidelity,
    )
