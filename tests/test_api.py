"""The public API: names in DESIGN.md's table are a contract."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import occlusion_probe as op

PACKAGE = Path(op.__file__).parent


def test_all_is_a_literal_list_of_existing_names() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    literal = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    )
    names = ast.literal_eval(literal)
    assert names == op.__all__
    for name in names:
        assert hasattr(op, name), name


def test_contract_names() -> None:
    for name in (
        "grid",
        "sweep",
        "keep_only",
        "Regions",
        "SweepResult",
        "ConfusionReport",
        "sliding_windows",
    ):
        assert name in op.__all__
    assert callable(op.Regions.from_label_map)
    for name in (
        "class_curves",
        "ranking",
        "attribution",
        "save",
        "load",
        "significance",
        "delta",
        "predicted",
        "correct",
    ):
        assert hasattr(op.SweepResult, name), name
    for name in ("class_curves", "heatmap", "confusion"):
        assert callable(getattr(op.plot, name))
    assert hasattr(op.captum, "GridOcclusion")
    parameters = inspect.signature(op.sweep).parameters
    for name in (
        "fills",
        "labels",
        "output",
        "batch_size",
        "device",
        "progress",
        "class_names",
        "engine",
        "reduce",
        "checkpoint",
    ):
        assert name in parameters, name
    assert parameters["fills"].default == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    keep = inspect.signature(op.keep_only).parameters
    assert tuple(keep)[:6] == ("model", "images", "labels", "regions", "keep", "fill")


def test_typed_package() -> None:
    assert (PACKAGE / "py.typed").exists()


def test_library_knows_nothing_of_faces() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text().lower()
        for word in ("fer2013", "fer-2013", "happiness", "disgust"):
            assert word not in text, f"{path.name} mentions {word}"
