"""Resolving what a reading of a result selects: a class, a fill, a flag, class names.

`SweepResult`, `ClassMeanResult`, the plots and `keep_only` all resolve their selections
here, so that the same argument means the same thing everywhere:

- a class (``cls``) is an int, a numpy integer, a 0-d integer tensor, or a class name;
- a fill is chosen by value or label (``fill=0.2``, ``fill="0.2"``) or by position
  (``fill_index=1``), never both;
- flags such as ``correct_only`` are bools, not truthy values;
- class names are a sequence of distinct strings (a single string is refused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import EmptySelectionError, InputTypeError, InputValueError, describe

__all__ = [
    "check_bool",
    "check_class_names",
    "check_selected",
    "class_index",
    "class_label",
    "class_text",
    "fill_position",
    "int_in_range",
    "integer_value",
]


def integer_value(value: object) -> int | None:
    """`value` as an int when it is an int, a numpy integer or a 0-d integer tensor; else None.

    Bools (Python, numpy or tensor) are not integers here: ``True`` as a class or region id
    is a mistake, not the id 1.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if (
        isinstance(value, Tensor)
        and value.dim() == 0
        and value.dtype != torch.bool
        and not value.is_floating_point()
        and not value.is_complex()
    ):
        return int(value.item())
    return None


def check_bool(name: str, value: object) -> bool:
    """`value` as a bool; raises `InputTypeError` for anything but a Python or numpy bool.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.

    Returns
    -------
    bool
        The flag.

    Raises
    ------
    InputTypeError
        When `value` is not a bool (``"no"`` and ``0`` are refused, not read as truthy).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputTypeError(f"{name}: expected a bool (True or False), got {describe(value)}")


def check_class_names(
    class_names: object, num_classes: int | None = None, name: str = "class_names"
) -> tuple[str, ...] | None:
    """Validate class names: None, or a sequence of distinct strings (K of them when known).

    Parameters
    ----------
    class_names : object
        The value given; None means no names.
    num_classes : int, optional
        K, when known: the names must then number exactly K.
    name : str
        The argument's name, for the message.

    Returns
    -------
    tuple of str or None
        The names.

    Raises
    ------
    InputTypeError
        When `class_names` is a single string, not a sequence, or holds a non-string.
    InputValueError
        When the names are not distinct, or do not number `num_classes`.
    """
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise InputTypeError(
            f"{name}: expected a sequence of str (one name per class), got {describe(class_names)}"
        )
    names = tuple(class_names)
    not_str = [n for n in names if not isinstance(n, str)]
    if not_str:
        raise InputTypeError(f"{name}: expected str names, got {not_str[:5]!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputValueError(f"{name}: expected distinct names, got {repeated} more than once")
    if num_classes is not None and len(names) != num_classes:
        raise InputValueError(
            f"{name}: expected {num_classes} names (one per class output), got {len(names)}"
        )
    return names


def class_index(
    cls: object, num_classes: int, class_names: Sequence[str] | None, name: str = "cls"
) -> int:
    """The index of a class given by index (int, numpy integer, 0-d integer tensor) or name.

    Parameters
    ----------
    cls : object
        The class given.
    num_classes : int
        K.
    class_names : sequence of str or None
        The K names, if any.
    name : str
        The argument's name, for the message.

    Returns
    -------
    int
        The index in [0, K).

    Raises
    ------
    InputTypeError
        When `cls` is a bool, float, or of another type.
    InputValueError
        When the index is out of range or the name unknown.
    """
    if isinstance(cls, str):
        if class_names is None:
            raise InputValueError(
                f"{name}: the class name {cls!r} needs class_names; this result has none, "
                f"so give an index in [0, {num_classes - 1}]"
            )
        if cls not in class_names:
            raise InputValueError(
                f"{name}: unknown class name {cls!r}; known names are {tuple(class_names)}"
            )
        return list(class_names).index(cls)
    index = integer_value(cls)
    if index is None:
        raise InputTypeError(
            f"{name}: expected a class index (int, numpy integer or 0-d integer tensor) or a "
            f"class name, got {describe(cls)}"
        )
    if not 0 <= index < num_classes:
        raise InputValueError(
            f"{name}: expected a class index in [0, {num_classes - 1}], got {index}"
        )
    return index


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """A readable name of class `index`: its name, or ``"class <index>"``."""
    return class_names[index] if class_names is not None else f"class {index}"


def _fill_value(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def fill_position(fill: object, fill_index: object, fill_labels: Sequence[str]) -> int | None:
    """The position on the V axis of a fill given by value or label, or by position.

    Parameters
    ----------
    fill : number, str or None
        A fill value (``0.2``, ``1``: matched against the numeric fills) or a fill label
        (``"0.2"``, ``"tensor0"``).
    fill_index : int or None
        A position on the V axis, in [0, V).
    fill_labels : sequence of str, length V
        The labels of the result's fills.

    Returns
    -------
    int or None
        The position; None when both `fill` and `fill_index` are None (all fills).

    Raises
    ------
    InputTypeError
        When `fill` is a bool or of another type, or `fill_index` is not an integer.
    InputValueError
        When both are given, no fill has that value or label, or the position is out of
        range; the message lists the fills.
    """
    labels = tuple(fill_labels)
    if fill is not None and fill_index is not None:
        raise InputValueError(
            f"fill, fill_index: expected at most one of them, got fill={fill!r} and "
            f"fill_index={fill_index!r}"
        )
    if fill_index is not None:
        position = integer_value(fill_index)
        if position is None:
            raise InputTypeError(
                f"fill_index: expected an int position, got {describe(fill_index)}"
            )
        if not 0 <= position < len(labels):
            raise InputValueError(
                f"fill_index: expected a position in [0, {len(labels) - 1}] (fills are "
                f"{labels}), got {position}"
            )
        return position
    if fill is None:
        return None
    if isinstance(fill, str):
        if fill not in labels:
            raise InputValueError(f"fill: unknown fill label {fill!r}; fills are {labels}")
        return labels.index(fill)
    if isinstance(fill, Tensor) and fill.dim() == 0 and fill.dtype != torch.bool:
        fill = fill.item()
    if isinstance(fill, (bool, np.bool_)) or not isinstance(fill, (int, float, np.number)):
        raise InputTypeError(
            f"fill: expected a fill value (number) or label (str), got {describe(fill)}; "
            "use fill_index= for a position"
        )
    value = float(fill)
    matches = [p for p, label in enumerate(labels) if _fill_value(label) == value]
    if not matches or math.isnan(value):
        raise InputValueError(
            f"fill: no fill with value {fill!r}; fills are {labels} "
            "(use fill_index= for a position)"
        )
    if len(matches) > 1:
        raise InputValueError(
            f"fill: the value {fill!r} matches several fills {[labels[p] for p in matches]}; "
            "use fill_index= to pick one"
        )
    return matches[0]


def check_selected(
    count: int, index: int, class_names: Sequence[str] | None, correct_only: bool, method: str
) -> None:
    """Raise `EmptySelectionError` when a reading selects no image (the one rule for all)."""
    if count == 0:
        which = "correctly classified images" if correct_only else "images"
        shown = repr(class_names[index]) if class_names is not None else str(index)
        raise EmptySelectionError(
            f"cls: no image selected for class {shown} in {method} (no {which} of that class; "
            f"correct_only={correct_only}); check selected_count() first"
        )


def class_text(index: int, class_names: Sequence[str] | None) -> str:
    """``"class 1 (cat)"``, or ``"class 1"`` without names."""
    if class_names is not None and 0 <= index < len(class_names):
        return f"class {index} ({class_names[index]})"
    return f"class {index}"


def int_in_range(name: str, value: object, low: int, high: int) -> int:
    """`value` as an int in [low, high]; the library's error naming `name` otherwise."""
    number = integer_value(value)
    if number is None:
        raise InputTypeError(f"{name}: expected an int in [{low}, {high}], got {describe(value)}")
    if not low <= number <= high:
        raise InputValueError(f"{name}: expected an int in [{low}, {high}], got {number}")
    return number
