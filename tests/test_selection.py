"""occlusion_probe.selection: one meaning for a class, a fill, a flag and class names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from occlusion_probe.errors import EmptySelectionError, InputTypeError, InputValueError
from occlusion_probe.selection import (
    check_bool,
    check_class_names,
    check_selected,
    class_index,
    fill_position,
    integer_value,
)

FILLS = ("0.0", "0.2", "0.4", "0.6", "0.8", "1.0")


@pytest.mark.parametrize(
    "given_class",
    [2, np.int64(2), np.int16(2), torch.tensor(2), torch.tensor(2, dtype=torch.int8), "c"],
)
def test_class_index_accepts_every_integer_kind_and_names(given_class: object) -> None:
    assert class_index(given_class, 3, ("a", "b", "c")) == 2


@pytest.mark.parametrize(
    ("given_class", "error", "message"),
    [
        (True, InputTypeError, "cls: expected a class index"),
        (np.bool_(True), InputTypeError, "cls: expected a class index"),
        (1.0, InputTypeError, "cls: expected a class index .* got float 1.0"),
        (torch.tensor(1.0), InputTypeError, "cls: expected a class index"),
        (torch.tensor(True), InputTypeError, "cls: expected a class index"),
        (torch.tensor([1]), InputTypeError, "cls: expected a class index"),
        (3, InputValueError, r"cls: expected a class index in \[0, 2\], got 3"),
        (-1, InputValueError, r"cls: expected a class index in \[0, 2\], got -1"),
        ("z", InputValueError, r"cls: unknown class name 'z'; known names are \('a', 'b', 'c'\)"),
    ],
)
def test_class_index_refuses(given_class: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        class_index(given_class, 3, ("a", "b", "c"))


def test_class_name_without_names_says_so() -> None:
    with pytest.raises(InputValueError, match="cls: the class name 'a' needs class_names"):
        class_index("a", 3, None)


def test_integer_value() -> None:
    assert integer_value(np.uint8(7)) == 7 and integer_value(torch.tensor(-3)) == -3
    for value in (True, 1.5, "1", torch.tensor([1]), torch.tensor(1.0), None):
        assert integer_value(value) is None


def test_fill_by_value_label_or_position() -> None:
    assert fill_position(0.2, None, FILLS) == 1
    assert fill_position(1, None, FILLS) == 5  # the value 1, not the second fill
    assert fill_position(1.0, None, FILLS) == 5
    assert fill_position(np.float32(0.0), None, FILLS) == 0
    assert fill_position(torch.tensor(0.4, dtype=torch.float64), None, FILLS) == 2
    assert fill_position("0.6", None, FILLS) == 3
    assert fill_position(None, 1, FILLS) == fill_position(None, np.int64(1), FILLS) == 1
    assert fill_position(None, None, FILLS) is None
    assert fill_position("tensor0", None, ("0.0", "tensor0")) == 1


@pytest.mark.parametrize(
    ("fill", "fill_index", "error", "message"),
    [
        (0.3, None, InputValueError, r"fill: no fill with value 0.3; fills are \('0.0', '0.2'"),
        (7, None, InputValueError, "fill: no fill with value 7; fills are"),
        (float("nan"), None, InputValueError, "fill: no fill with value nan"),
        ("0.3", None, InputValueError, "fill: unknown fill label '0.3'; fills are"),
        (True, None, InputTypeError, "fill: expected a fill value .* got bool True"),
        ([0.2], None, InputTypeError, "fill: expected a fill value"),
        (0.2, 1, InputValueError, "fill, fill_index: expected at most one of them"),
        (None, 6, InputValueError, r"fill_index: expected a position in \[0, 5\]"),
        (None, -1, InputValueError, r"fill_index: expected a position in \[0, 5\]"),
        (None, 1.0, InputTypeError, "fill_index: expected an int position, got float 1.0"),
        (None, True, InputTypeError, "fill_index: expected an int position"),
    ],
)
def test_fill_errors(
    fill: object, fill_index: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        fill_position(fill, fill_index, FILLS)


def test_fill_value_matching_two_labels_is_ambiguous() -> None:
    with pytest.raises(InputValueError, match="matches several fills"):
        fill_position(1, None, ("1", "1.0"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8, unique=True))
def test_every_fill_value_finds_its_own_position(values: list[float]) -> None:
    labels = tuple(repr(float(v)) for v in values)
    for position, value in enumerate(values):
        assert fill_position(value, None, labels) == position
        assert fill_position(labels[position], None, labels) == position
        assert fill_position(None, position, labels) == position


def test_check_bool() -> None:
    assert check_bool("correct_only", True) is True
    assert check_bool("correct_only", np.bool_(False)) is False
    for value in ("no", 0, 1, None):
        with pytest.raises(InputTypeError, match="correct_only: expected a bool"):
            check_bool("correct_only", value)


def test_check_class_names() -> None:
    assert check_class_names(["a", "b"], 2) == ("a", "b")
    assert check_class_names(None, 3) is None
    with pytest.raises(
        InputTypeError, match=r"class_names: expected a sequence of str .* got str 'cat'"
    ):
        check_class_names("cat", 3)
    with pytest.raises(InputValueError, match=r"class_names: expected distinct names, got \['a'\]"):
        check_class_names(("a", "b", "a"))
    with pytest.raises(InputTypeError, match=r"class_names: expected str names, got \[1\]"):
        check_class_names(["a", 1])
    with pytest.raises(InputValueError, match=r"class_names: expected 3 names \(one per class"):
        check_class_names(["a", "b"], 3)


def test_check_selected() -> None:
    check_selected(1, 0, None, True, "class_curves")
    with pytest.raises(EmptySelectionError, match="no image selected for class 'b' in ranking"):
        check_selected(0, 1, ("a", "b"), True, "ranking")
    assert issubclass(EmptySelectionError, InputValueError)
